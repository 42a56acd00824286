--[[
  The stalled-job check. At most one run per interval across all workers
  (guarded by the stalled-check key). A job that was active at the previous
  run, was not renewed since and has no lock now is stalled: it goes back to
  wait (front), and is marked to fail (defa) once it stalled more than
  maxStalledCount times. Every job active now becomes a candidate for the
  next run.

  KEYS[1]  stalled-check key
  ARGV[1]  qk  ARGV[2] maxStalledCount  ARGV[3] now  ARGV[4] interval ms
  Returns  the ids moved back to wait ({} when another worker ran the check)
  Events   waiting (prev active), stalled
]]
--- @include "includes/base"

local qk, maxStalled, now, interval = ARGV[1], tonumber(ARGV[2]), ARGV[3], tonumber(ARGV[4])
if rcall("SET", KEYS[1], now, "PX", interval, "NX") == false then
  return {}
end
local stalledKey, activeKey = qk .. ":stalled", qk .. ":active"
lazy().refuseForeignKey(qk .. ":wait", "list", "the stalled jobs")
redis.pcall("XTRIM", qk .. ":events", "MAXLEN", "~", maxEvents(qk)) -- pcall: as emit's XADD

-- A stalled job goes back to wait (marked to fail once it stalled too often).
local function requeueStalled(jobId, jobKey)
  local stalledCount = incrementCounter(jobKey, "stc")
  if stalledCount > maxStalled then
    local rjk = rcall("HGET", jobKey, "rjk")
    local ofScheduler = rjk and (rcall("EXISTS", qk .. ":repeat:" .. rjk) == 1
      or rcall("ZSCORE", qk .. ":repeat", rjk))
    if not ofScheduler then
      rcall("HSET", jobKey, "defa", "job stalled more than allowable limit")
    end
  end
  rcall("RPUSH", qk .. ":wait", jobId)
  if not isPausedOrMaxed(qk) then
    addWakeMarker(qk)
  end
  emit(qk, "waiting", "jobId", jobId, "prev", "active")
  emit(qk, "stalled", "jobId", jobId)
end

local moved = {}
local candidates = rcall("SMEMBERS", stalledKey)
rcall("DEL", stalledKey)
for _, jobId in ipairs(candidates) do
  if string.sub(jobId, 1, 2) == "0:" then
    rcall("LREM", activeKey, 1, jobId)
  else
    local jobKey = qk .. ":" .. jobId
    if rcall("EXISTS", jobKey .. ":lock") == 0 and rcall("LREM", activeKey, 1, jobId) > 0 then
      local keyType = rcall("TYPE", jobKey)["ok"]
      if keyType == "hash" or keyType == "none" then
        requeueStalled(jobId, jobKey)
        moved[#moved + 1] = jobId
      else
        reportNotAJob(qk, jobId, keyType, "active")
      end
    end
  end
end
rcallInChunks("SADD", stalledKey, rcall("LRANGE", activeKey, "0", "-1"))
return moved
