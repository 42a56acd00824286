--[[
  Moves one delayed job to wait (or prioritized) now.

  KEYS[1]  delayed key
  ARGV[1]  qk  ARGV[2] jobId
  Returns  0, or -3 when the job is not delayed
  Events   waiting (prev delayed)
]]
--- @include "includes/base"

local qk, jobId = ARGV[1], ARGV[2]
if rcall("ZREM", KEYS[1], jobId) == 0 then
  return -3
end
local jobKey = qk .. ":" .. jobId
enqueueReady(qk, jobId, tonumber(rcall("HGET", jobKey, "priority")) or 0, false)
if not isPausedOrMaxed(qk) then
  addWakeMarker(qk)
end
emit(qk, "waiting", "jobId", jobId, "prev", "delayed")
rcall("HSET", jobKey, "delay", 0)
return 0
