--[[
  Moves one delayed job to wait (or prioritized) now.

  KEYS[1]  delayed key
  ARGV[1]  qk  ARGV[2] jobId
  Returns  0, or -3 when the job is not delayed
  Events   waiting (prev delayed)
]]
--- @include "includes/base"

local qk, jobId = ARGV[1], ARGV[2]
local jobKey = qk .. ":" .. jobId
local fields = rcall("HMGET", jobKey, "priority", "gid")
local priority = tonumber(fields[1]) or 0
if rcall("ZSCORE", KEYS[1], jobId) == false then
  return -3
end
-- where it goes, and the meta read after: checked before it leaves delayed
refuseForeignPlaceKeys(qk, false, 0, priority, fields[2], "job " .. jobId)
rcall("ZREM", KEYS[1], jobId)
enqueueReady(qk, jobId, priority, false, fields[2] or false)
if not isPausedOrMaxed(qk) then
  addWakeMarker(qk)
end
emit(qk, "waiting", "jobId", jobId, "prev", "delayed")
rcall("HSET", jobKey, "delay", 0)
return 0
