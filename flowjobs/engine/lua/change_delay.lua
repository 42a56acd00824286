--[[
  Gives a delayed job a new delay counted from now.

  KEYS[1]  delayed key
  ARGV[1]  qk  ARGV[2] jobId  ARGV[3] now  ARGV[4] delay ms
  Returns  0, -1 missing job, -3 not delayed
  Events   delayed
]]
--- @include "includes/base"

local qk, jobId, now, delay = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local jobKey = qk .. ":" .. jobId
if rcall("EXISTS", jobKey) == 0 then
  return -1
end
-- the set it goes back to, and the meta read after: checked before it leaves it
refuseForeignPlaceKeys(qk, false, 1, 0, nil, "job " .. jobId)
if rcall("ZREM", KEYS[1], jobId) == 0 then
  return -3
end
rcall("HSET", jobKey, "delay", delay)
addDelayed(qk, jobId, now + delay)
return 0
