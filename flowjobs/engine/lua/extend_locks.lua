--[[
  Renews the locks of many active jobs in one call; a renewed job is taken
  off the stalled candidates.

  KEYS[1]  stalled set key
  ARGV[1]  qk  ARGV[2] duration ms  ARGV[3..] pairs of jobId, token
  Returns  the ids whose lock could not be renewed (lost or taken)
]]
--- @include "includes/base"

local qk, duration = ARGV[1], ARGV[2] -- as text (see base.lua on numbers as arguments)
local lost = {}
for i = 3, #ARGV, 2 do
  local jobId, token = ARGV[i], ARGV[i + 1]
  local lockKey = qk .. ":" .. jobId .. ":lock"
  if rcall("GET", lockKey) == token then
    rcall("SET", lockKey, token, "PX", duration)
    -- pcall: another client's value at the stalled set must not stop the renewal of the
    -- locks after this one (the stalled check, which reads that set, refuses it meanwhile)
    redis.pcall("SREM", KEYS[1], jobId)
  else
    lost[#lost + 1] = jobId
  end
end
return lost
