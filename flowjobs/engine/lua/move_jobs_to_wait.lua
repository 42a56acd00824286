--[[
  retry_jobs / promote_jobs: moves up to `count` jobs of a finished or
  delayed set back to wait.

  KEYS[1]  the state set (failed, completed or delayed)
  ARGV[1]  qk  ARGV[2] count  ARGV[3] max score  ARGV[4] state name
  Returns  1 while more jobs remain, else 0
  Events   waiting (prev state) per job
]]
--- @include "includes/base"

local qk, count, maxScore, state = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4]
local what = "the " .. state .. " jobs"
-- another client's value at a key this move writes: refused before a job is taken out
refuseForeignKey(KEYS[1], "zset", what)
refuseForeignKey(qk .. ":meta", "hash", what)
refuseForeignKey(qk .. ":wait", "list", what)
local ids = rcall("ZRANGEBYSCORE", KEYS[1], 0, maxScore, "LIMIT", 0, count)
if #ids > 0 then
  for _, jobId in ipairs(ids) do
    local jobKey = qk .. ":" .. jobId
    if state == "failed" then
      rcall("HDEL", jobKey, "finishedOn", "processedOn", "failedReason")
    elseif state == "completed" then
      rcall("HDEL", jobKey, "finishedOn", "processedOn", "returnvalue")
    else
      rcall("HSET", jobKey, "delay", 0)
    end
    emit(qk, "waiting", "jobId", jobId, "prev", state)
  end
  rcallInChunks("ZREM", KEYS[1], ids)
  rcallInChunks("LPUSH", qk .. ":wait", ids)
  if not isPausedOrMaxed(qk) then
    addWakeMarker(qk)
  end
end
if rcall("ZCOUNT", KEYS[1], 0, maxScore) > 0 then
  return 1
end
return 0
