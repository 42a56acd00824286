--[[
  Pauses a job scheduler: its pending iteration, if it has not started yet
  (delayed, prioritized or in wait), is removed, and the definition is marked
  paused (`fjPaused`, a field BullMQ ignores) so no worker produces another run.
  Any upsert of the scheduler (flowjobs' or Node's upsertJobScheduler) rewrites
  the definition hash, which drops the mark: that is how it resumes.

  KEYS[1]  meta key (routing only)
  ARGV[1]  qk  ARGV[2] now  ARGV[3] scheduler id
  Returns  0 paused, 1 no such scheduler
  Events   removed (prev delayed | prioritized | wait) for the pending iteration
]]
--- @include "includes/base"
--- @include "includes/parent"
--- @include "includes/remove"
--- @include "includes/scheduler"

local qk, now, schedulerId = ARGV[1], tonumber(ARGV[2]), ARGV[3]
refuseForeignSchedulerKeys(qk, schedulerId, nil, "scheduler " .. schedulerId)
local repeatKey = qk .. ":repeat"
local schedulerKey = repeatKey .. ":" .. schedulerId
local millis = rcall("ZSCORE", repeatKey, schedulerId)
if not millis or rcall("EXISTS", schedulerKey) == 0 then
  return 1
end
local jobId = "repeat:" .. schedulerId .. ":" .. millis
local prev = nil
if rcall("ZREM", qk .. ":delayed", jobId) == 1 then
  prev = "delayed"
elseif rcall("ZREM", qk .. ":prioritized", jobId) == 1 then
  prev = "prioritized"
elseif rcall("LREM", qk .. ":wait", 1, jobId) == 1 then
  prev = "wait"
end
if prev then
  removeQuietly(qk, jobId, now)
  emit(qk, "removed", "jobId", jobId, "prev", prev)
end
rcall("HSET", schedulerKey, "fjPaused", now)
return 0
