--[[
  Job.retry(): moves a completed or failed job back to wait for a new run,
  making it a pending dependency of its parent again.

  KEYS[1]  job key
  ARGV[1]  qk  ARGV[2] jobId  ARGV[3] state "completed" | "failed"
  ARGV[4]  lifo "1"/"0"  ARGV[5] reset attemptsMade "1"/"0"
  ARGV[6]  reset attemptsStarted "1"/"0"
  Returns  1, -1 missing job, -3 not in that state
  Events   waiting (prev state)
]]
--- @include "includes/base"

local qk, jobId, state = ARGV[1], ARGV[2], ARGV[3]
local jobKey = KEYS[1]
if rcall("EXISTS", jobKey) == 0 then
  return -1
end
if rcall("ZSCORE", qk .. ":" .. state, jobId) == false then
  return -3
end
-- where it goes, and the meta read after: checked before it leaves its set
refuseForeignKey(qk .. ":wait", "list", "job " .. jobId)
refuseForeignKey(qk .. ":meta", "hash", "job " .. jobId)
rcall("ZREM", qk .. ":" .. state, jobId)
local valueField = "returnvalue"
if state == "failed" then
  valueField = "failedReason"
end
rcall("HDEL", jobKey, "finishedOn", "processedOn", valueField, "defa")
if ARGV[5] == "1" then
  rcall("HDEL", jobKey, "atm", "attemptsMade")
end
if ARGV[6] == "1" then
  rcall("HDEL", jobKey, "ats")
end
if ARGV[4] == "1" then
  rcall("RPUSH", qk .. ":wait", jobId)
else
  rcall("LPUSH", qk .. ":wait", jobId)
end
if not isPausedOrMaxed(qk) then
  addWakeMarker(qk)
end
local parentKey = rcall("HGET", jobKey, "parentKey")
if parentKey and rcall("EXISTS", parentKey) == 1 then
  local relinked
  if state == "failed" then
    relinked = rcall("ZREM", parentKey .. ":unsuccessful", jobKey) == 1
      or rcall("HDEL", parentKey .. ":failed", jobKey) == 1
  else
    relinked = rcall("HDEL", parentKey .. ":processed", jobKey) == 1
  end
  if relinked then
    rcall("SADD", parentKey .. ":dependencies", jobKey)
  end
end
emit(qk, "waiting", "jobId", jobId, "prev", state)
return 1
