--[[
  Moves an active job to completed or failed (final outcome), updates its
  parent, applies retention and metrics, and optionally takes the next jobs.

  KEYS[1]  meta key (routing only)
  ARGV[1]  qk  ARGV[2] jobId  ARGV[3] now  ARGV[4] token
  ARGV[5]  "completed" | "failed"
  ARGV[6]  returnvalue JSON | failed reason (plain text)
  ARGV[7]  keep count (-1 keep all, 0 remove now)  ARGV[8] keep age s ("" none)
  ARGV[9]  keep limit ("" = 1000)  ARGV[10] attempts
  ARGV[11] metrics max data points ("" = off)
  ARGV[12] extra fields to HSET, JSON object ("" = none)
  ARGV[13] lock duration  ARGV[14] limiter max  ARGV[15] limiter duration
  ARGV[16] worker name  ARGV[17..] lock tokens for fetching next jobs (the last may
           be marked "?": a job taken ahead, see fetchJobs)
  Returns  0, an error code (-1 missing, -2/-6 lock, -3 not active,
           -4 pending children, -9 failed children), or the fetch tuple
  Events   completed | failed (+ retries-exhausted), drained, parent events
]]
--- @include "includes/base"
--- @include "includes/fields"
--- @include "includes/parent"
--- @include "includes/retention"
--- @include "includes/fetch"
--- @include "includes/enqueue"
--- @include "includes/dedup"

local qk, jobId, now, token, target = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4], ARGV[5]
local value = ARGV[6]
local jobKey = qk .. ":" .. jobId

-- (empty sets do not exist: one EXISTS answers for a job without children)
if target == "completed"
    and rcall("EXISTS", jobKey .. ":dependencies", jobKey .. ":unsuccessful") > 0 then
  refuseForeignKey(jobKey .. ":dependencies", "set", "job " .. jobId)
  refuseForeignKey(jobKey .. ":unsuccessful", "zset", "job " .. jobId)
  if rcall("SCARD", jobKey .. ":dependencies") ~= 0 then
    return -4
  end
  if rcall("ZCARD", jobKey .. ":unsuccessful") ~= 0 then
    return -9
  end
end
local fields = rcall("HMGET", jobKey, "deid", "parentKey", "parent", "gid")
-- A parent's and a deduplication id's keys are written after the job left active: they
-- are checked before the first write (see refuseForeignKey).
local parent = parentFrom(fields[2], fields[3])
if parent then
  refuseForeignParentKeys(parent, target, "job " .. jobId)
end
local pendingDedup = nil
if fields[1] then
  pendingDedup = refuseForeignDedupKeys(qk, fields[1], "job " .. jobId)
end
local keepCount = tonumber(ARGV[7])
local setKey = qk .. ":" .. target
-- The set first, before the job leaves active (see refuseForeignKey): a ZADD refused
-- here has written nothing. (No TYPE check: this is every job's path.)
local addedToSet = 0
if keepCount ~= 0 then
  addedToSet = redis.pcall("ZADD", setKey, "NX", ARGV[3], jobId) -- ARGV[3]: now as text
  if type(addedToSet) == "table" then
    lazy().refuseForeignKey(setKey, "zset", "job " .. jobId)
    error(addedToSet) -- refused for another reason
  end
end
local taken = takeFromActive(qk, jobKey, jobId, token, fields[4] or false)
if taken ~= 0 then
  if addedToSet == 1 then
    rcall("ZREM", setKey, jobId)
  end
  return taken
end
setFieldsFromJson(jobKey, ARGV[12])

if fields[1] then
  finishDeduplicated(qk, fields[1], jobId, now, pendingDedup)
end

if parent then
  if target == "completed" then
    onChildCompleted(parent, jobKey, value, now)
  else
    onChildFailed(parent, jobKey, value, now)
  end
end

local attemptsMade = incrementCounter(jobKey, "atm")
if keepCount == 0 then
  unlinkFromParent(jobKey, now)
  removeJobKeys(jobKey)
else
  if addedToSet == 0 then -- it was in the set already: its time is now
    rcall("ZADD", setKey, ARGV[3], jobId)
  end
  if target == "completed" then
    rcall("HSET", jobKey, "returnvalue", value, "finishedOn", ARGV[3])
  else
    rcall("HSET", jobKey, "failedReason", value, "finishedOn", ARGV[3])
    rcall("HDEL", jobKey, "defa")
  end
  applyRetention(qk, setKey, keepCount, tonumber(ARGV[8]), tonumber(ARGV[9]), now)
end

if target == "completed" then
  emit(qk, "completed", "jobId", jobId, "returnvalue", value, "prev", "active")
else
  emit(qk, "failed", "jobId", jobId, "failedReason", value, "prev", "active")
  if attemptsMade >= (tonumber(ARGV[10]) or 0) then
    emit(qk, "retries-exhausted", "jobId", jobId, "attemptsMade", attemptsMade)
  end
end
if ARGV[11] ~= "" then
  updateMetrics(qk, target, tonumber(ARGV[11]), now)
end

local fetched = fetchNextFromArgv(qk, ARGV[3], 13)
if fetched then
  return fetched
end
-- pcall, as the fetch above: the job is recorded, and another client's value at one of
-- these keys costs the event, not the finish
if redis.pcall("LLEN", qk .. ":wait") == 0 and redis.pcall("LLEN", qk .. ":active") == 0
    and redis.pcall("ZCARD", qk .. ":prioritized") == 0 then
  emit(qk, "drained")
end
return 0
