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
-- Only a job waiting in line moves (a job is in no key another client's value took):
-- then where it goes, and the meta read after, are checked before it leaves its place.
-- Any other job's priority is a field of its hash (a delayed one goes in line under it).
local prioritizedKey, waitKey = qk .. ":prioritized", qk .. ":wait"
local inPrioritized = not foreignType(prioritizedKey, "zset")
  and rcall("ZSCORE", prioritizedKey, jobId)
local inWait = not inPrioritized and not foreignType(waitKey, "list")
  and rcall("LPOS", waitKey, jobId)
if inPrioritized or inWait then
  local gid = rcall("HGET", jobKey, "gid")
  refuseForeignPlaceKeys(qk, false, 0, priority, gid, "job " .. jobId)
  if inPrioritized then
    rcall("ZREM", prioritizedKey, jobId)
  else
    rcall("LREM", waitKey, -1, jobId)
  end
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
