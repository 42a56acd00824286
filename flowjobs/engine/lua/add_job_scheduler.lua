--[[
  Creates or replaces a job scheduler and its pending iteration. A pending
  iteration still waiting to run (delayed, prioritized or in wait) is
  replaced; an `every` scheduler whose interval did not change keeps its slot.

  KEYS[1]  meta key (routing only)
  ARGV[1]  qk  ARGV[2] now  ARGV[3] scheduler id
  ARGV[4]  next ms (pattern; computed by the client) or "" (every)
  ARGV[5]  scheduler JSON {name, every?, pattern?, tz?, limit?, startDate?,
           endDate?, offset?}
  ARGV[6]  template data JSON  ARGV[7] template opts JSON (stored options)
  ARGV[8]  iteration opts JSON (template opts plus repeat, timestamp, ...)
  Returns  {iteration job id, delay ms}, -10 (pattern: that slot is taken)
           or -11 (every: 32 consecutive slots taken)
  Events   added, delayed | waiting
]]
--- @include "includes/base"
--- @include "includes/parent"
--- @include "includes/remove"
--- @include "includes/enqueue"
--- @include "includes/scheduler"

local qk, now, schedulerId = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local nextMillis = tonumber(ARGV[4])
local scheduler = cjson.decode(ARGV[5])
local templateData, templateOpts = ARGV[6], ARGV[7]
local opts = cjson.decode(ARGV[8])
local repeatKey = qk .. ":repeat"
local schedulerKey = repeatKey .. ":" .. schedulerId
refuseForeignSchedulerKeys(qk, schedulerId, opts, "scheduler " .. schedulerId)

local prevMillis = tonumber(rcall("ZSCORE", repeatKey, schedulerId))
local every = tonumber(scheduler.every)
local repeatOffset = type(opts["repeat"]) == "table" and tonumber(opts["repeat"].offset) or nil
local offset = tonumber(scheduler.offset) or repeatOffset or 0
local everyChanged = false
if every then
  local from = prevMillis
  if prevMillis and tonumber(rcall("HGET", schedulerKey, "every")) ~= every then
    from = nil
    everyChanged = true
  end
  nextMillis, offset = everyNextMillis(from, every, now, offset, scheduler.startDate)
end

-- the pending iteration, if it has not started yet, is replaced
local replaced = false
if prevMillis then
  local prevId = "repeat:" .. schedulerId .. ":" .. prevMillis
  if rcall("EXISTS", qk .. ":" .. prevId) == 1 then
    if rcall("ZREM", qk .. ":delayed", prevId) == 1 or rcall("ZREM", qk .. ":prioritized", prevId) == 1
        or rcall("LREM", qk .. ":wait", 1, prevId) == 1 then
      removeQuietly(qk, prevId, now)
      replaced = true
    end
  end
end
if replaced then
  if every and not everyChanged then
    nextMillis = prevMillis
  end
else
  scheduler.offset = offset
end

local jobId = "repeat:" .. schedulerId .. ":" .. nextMillis
if rcall("EXISTS", qk .. ":" .. jobId) == 1 then
  if not every then
    return -10
  end
  local free = false
  for _ = 1, 32 do
    nextMillis = nextMillis + every
    jobId = "repeat:" .. schedulerId .. ":" .. nextMillis
    if rcall("EXISTS", qk .. ":" .. jobId) == 0 then
      free = true
      break
    end
  end
  if not free then
    return -11
  end
end

-- the definition is rewritten; its iteration count and derived offset stay
local fields = {"name", scheduler.name}
for _, field in ipairs({"tz", "limit", "pattern", "startDate", "endDate", "every"}) do
  local value = scheduler[field]
  if value ~= nil and value ~= cjson.null then
    fields[#fields + 1] = field
    fields[#fields + 1] = value
  end
end
local keptOffset = scheduler.offset
if keptOffset == nil or keptOffset == cjson.null then
  keptOffset = rcall("HGET", schedulerKey, "offset")
end
if keptOffset then
  fields[#fields + 1] = "offset"
  fields[#fields + 1] = keptOffset
end
if templateOpts ~= "" and templateOpts ~= "{}" then
  fields[#fields + 1] = "opts"
  fields[#fields + 1] = templateOpts
end
if templateData ~= "" and templateData ~= "{}" then
  fields[#fields + 1] = "data"
  fields[#fields + 1] = templateData
end
fields[#fields + 1] = "ic"
fields[#fields + 1] = rcall("HGET", schedulerKey, "ic") or 1
rcall("DEL", schedulerKey)
rcall("HSET", schedulerKey, unpack(fields))
rcall("ZADD", repeatKey, nextMillis, schedulerId)

-- (the counter only counts an iteration: another client's value there is left alone)
redis.pcall("INCR", qk .. ":id")
local delay = math.max(0, nextMillis - now)
addIteration(qk, schedulerId, jobId, scheduler.name, templateData, opts, now, delay)
return {jobId, delay}
