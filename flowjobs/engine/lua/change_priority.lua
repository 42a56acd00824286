--[[
  Changes a job's priority; a job waiting in line is re-queued under it.

  KEYS[1]  meta key (routing only)
  ARGV[1]  qk  ARGV[2] jobId  ARGV[3] priority  ARGV[4] lifo "1"/"0"
  Returns  0, or -1 missing job
]]
--- @include "includes/base"

local qk, jobId, priority, lifo = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4] == "1"
local jobKey = qk .. ":" .. jobId
if rcall("EXISTS", jobKey) == 0 then
  return -1
end
-- where it goes, and the meta read after: checked before it leaves its place
local gid = rcall("HGET", jobKey, "gid")
refuseForeignKey(qk .. ":prioritized", "zset", "job " .. jobId)
refuseForeignPlaceKeys(qk, false, 0, priority, gid, "job " .. jobId)
if rcall("ZREM", qk .. ":prioritized", jobId) == 1 or rcall("LREM", qk .. ":wait", -1, jobId) > 0 then
  if priority > 0 and lifo then
    rcall("ZADD", qk .. ":prioritized", priority * 4294967296, jobId)
  else
    enqueueReady(qk, jobId, priority, lifo, gid or false)
    if not isPausedOrMaxed(qk) then
      addWakeMarker(qk)
    end
  end
end
rcall("HSET", jobKey, "priority", priority)
return 0
