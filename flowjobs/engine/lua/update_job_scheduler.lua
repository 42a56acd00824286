--[[
  Produces the next iteration of a job scheduler when a worker takes its
  current iteration. Only the current iteration (`repeat:<id>:<score>`) can
  advance the scheduler, so however many workers race, each run yields one
  next iteration; a removed scheduler stops here.

  KEYS[1]  meta key (routing only)
  ARGV[1]  qk  ARGV[2] now  ARGV[3] scheduler id
  ARGV[4]  next ms (pattern; computed by the client) or "" (every)
  ARGV[5]  iteration opts JSON  ARGV[6] id of the iteration taken (producer)
  Returns  the new iteration's job id, or false (nothing to do)
  Events   added, delayed | waiting; duplicated when the next slot is taken
]]
--- @include "includes/base"
--- @include "includes/enqueue"
--- @include "includes/scheduler"

local qk, now, schedulerId, producerId = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[6]
local nextMillis = tonumber(ARGV[4])
local opts = cjson.decode(ARGV[5])
refuseForeignSchedulerKeys(qk, schedulerId, opts, "scheduler " .. schedulerId)
local repeatKey = qk .. ":repeat"
local prevMillis = tonumber(rcall("ZSCORE", repeatKey, schedulerId))
if not prevMillis then
  return false
end
local schedulerKey = repeatKey .. ":" .. schedulerId
local scheduler = rcall("HMGET", schedulerKey, "name", "data", "every", "startDate", "offset")
local every = tonumber(scheduler[3])
local repeatOpts = type(opts["repeat"]) == "table" and opts["repeat"] or nil
if not every and repeatOpts then
  every = tonumber(repeatOpts.every)
end
if every then
  local offset = scheduler[5] or (repeatOpts and tonumber(repeatOpts.offset)) or 0
  nextMillis = everyNextMillis(prevMillis, every, now, offset, scheduler[4])
end
if not nextMillis or producerId ~= "repeat:" .. schedulerId .. ":" .. prevMillis then
  return false
end

local jobId = "repeat:" .. schedulerId .. ":" .. nextMillis
if rcall("EXISTS", qk .. ":" .. jobId) == 1 then
  emit(qk, "duplicated", "jobId", jobId)
  return false
end
rcall("ZADD", repeatKey, nextMillis, schedulerId)
rcall("HINCRBY", schedulerKey, "ic", 1)
-- (the counter only counts an iteration: another client's value there is left alone)
redis.pcall("INCR", qk .. ":id")
addIteration(qk, schedulerId, jobId, scheduler[1] or opts.name, scheduler[2] or "{}", opts, now,
  math.max(0, nextMillis - now))
return jobId
