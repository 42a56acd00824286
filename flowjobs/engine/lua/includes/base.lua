--[[
  Helpers shared by every flowjobs script (included once per script).
  A queue is addressed by its qualified name `qk` = "<prefix>:<queue>"; every
  queue key is qk .. ":" .. suffix and a job key is qk .. ":" .. jobId, the
  same layout BullMQ uses, so keys of other queues (parents, children) can be
  derived without being passed in.
]]
local rcall = redis.call

-- Arguments of redis.call go as text where they can: Redis 7.0 formats a number
-- argument with "%.17g", 0.6 to 1.3 us each (more than many whole commands), so
-- constants are written as strings and times are passed on as the caller's text.
-- A whole number the script computed goes as wholeText(n) (211 ns; tostring 446).
local function wholeText(n)
  return string.format("%d", n)
end

-- rcall(command, key, ids...) in calls of 5,000 ids: Lua's unpack takes about 8,000.
local function rcallInChunks(command, key, ids)
  for i = 1, #ids, 5000 do
    rcall(command, key, unpack(ids, i, math.min(i + 4999, #ids)))
  end
end

-- The events cap as text for MAXLEN: a whole number as stored, else made one ("1e4",
-- "12.5"; past 10^15, 10^15); nil when unset or not a number of 0 or more (a value a
-- foreign client wrote that XADD would refuse, failing every script that emits an event).
local function eventsCapText(value)
  if not value or (#value <= 15 and string.find(value, "^%d+$")) then
    return value or nil
  end
  local number = tonumber(value)
  if number and number >= 0 then
    return wholeText(math.floor(math.min(number, 1e15)))
  end
  return nil
end

-- Read once per script run and queue: a script may emit many events.
local maxEventsOf = {}
local function maxEvents(qk)
  local cached = maxEventsOf[qk]
  if cached then
    return cached
  end
  local value = eventsCapText(rcall("HGET", qk .. ":meta", "opts.maxLenEvents"))
  if not value then
    value = "10000"
    rcall("HSET", qk .. ":meta", "opts.maxLenEvents", value)
  end
  maxEventsOf[qk] = value
  return value
end

-- The queue's meta fields a move out of active and the fetch that follows it read, once
-- per script run (nothing between them writes them); it seeds the events cap as well.
local metaOf = {}
local function queueMeta(qk)
  local meta = metaOf[qk]
  if not meta then
    meta = rcall("HMGET", qk .. ":meta", "paused", "concurrency", "max", "duration",
      "groupConcurrency", "groupMax", "groupDuration", "opts.maxLenEvents")
    metaOf[qk] = meta
    maxEventsOf[qk] = maxEventsOf[qk] or eventsCapText(meta[8])
  end
  return meta
end

-- An event on the queue's stream. pcall: the stream tells of what the scripts did, the
-- job's keys are what they did; a foreign value at the stream's key (which no listener
-- can read either) loses the event, not the script's remaining writes.
local function emit(qk, event, ...)
  redis.pcall("XADD", qk .. ":events", "MAXLEN", "~", maxEvents(qk), "*", "event", event, ...)
end

-- HINCRBY of a job's counter (ats, atm, stc). A hash written by a foreign producer
-- may hold a non-integer there; that must not abort the script half-way (its
-- earlier writes would stay), so such a counter restarts at 1.
local function incrementCounter(jobKey, field)
  local value = redis.pcall("HINCRBY", jobKey, field, "1")
  if type(value) == "table" and value.err then
    rcall("HSET", jobKey, field, 1)
    return 1
  end
  return value
end

-- A queue is "paused or maxed" when it is paused or its global concurrency is
-- reached; such a queue gets no wake-up marker and hands out no jobs.
local function isPausedOrMaxed(qk)
  local meta = rcall("HMGET", qk .. ":meta", "paused", "concurrency")
  if meta[1] then
    return true
  end
  if meta[2] then
    -- pcall: an add reads this after its writes, and another client's value at `active`
    -- must not fail an add that is done (no job can be taken meanwhile: fetches refuse)
    local active = redis.pcall("LLEN", qk .. ":active")
    return type(active) == "number" and active >= tonumber(meta[2])
  end
  return false
end

-- A rate limiter's count of jobs taken in its window. A value INCRBY would refuse
-- (another client's "1e3", a hash) is dropped: the fetch's INCRBY would fail it
-- half-written.
local function limiterUsed(limiterKey)
  local value = redis.pcall("GET", limiterKey)
  if not value then
    return 0
  end
  if type(value) == "string" and string.find(value, "^%-?%d+$") then
    return tonumber(value)
  end
  rcall("DEL", limiterKey)
  return 0
end

-- What TYPE says of `key` when it holds another kind of value than `kind` (what TYPE
-- says of the right one), else nil.
--- @lazy
local function foreignType(key, kind)
  local found = rcall("TYPE", key)["ok"]
  if found ~= kind and found ~= "none" then
    return found
  end
  return nil
end

-- The keys refuseForeignKey found right in this script run: a script that checks the
-- places of many jobs (a bulk add) asks Redis once a key.
local rightKinds = {}

-- Redis keeps the writes a script made before one of its commands failed. A queue key
-- that another client filled with another kind of value makes the command writing it
-- fail: a move checks its destination before it writes anything, so that the job stays
-- where it was instead of being in no state. what: the jobs the script would have
-- moved ("job 7").
--- @lazy
local function refuseForeignKey(key, kind, what)
  if rightKinds[key] == kind then
    return
  end
  local found = foreignType(key, kind)
  if found then
    error(redis.error_reply("ERR flowjobs: " .. key .. " holds a " .. found .. ", not a "
      .. kind .. " (another client's value): nothing written, " .. what
      .. " left as it was; delete or rename that key"))
  end
  rightKinds[key] = kind
end

-- The marker only wakes idle workers (and they fetch on a timer too): pcall, so that a
-- foreign value at its key costs the wake-up, not the script's other writes.
local function addWakeMarker(qk)
  redis.pcall("ZADD", qk .. ":marker", "0", "0")
end

-- Marker "1" carries the due time of the earliest delayed job so that idle
-- workers block exactly until then.
--- @lazy
local function addDelayMarker(qk)
  local first = rcall("ZRANGE", qk .. ":delayed", 0, 0, "WITHSCORES")
  if first[2] then
    redis.pcall("ZADD", qk .. ":marker", math.floor(tonumber(first[2]) / 4096), "1") -- as above
  end
end

-- The priority counter when another client's value there refuses INCR: it goes on after
-- the highest counter in the prioritized set, so no job waiting there is passed.
--- @lazy
local function restartPriorityCounter(qk)
  local highest = 0
  local scored = rcall("ZRANGE", qk .. ":prioritized", 0, -1, "WITHSCORES")
  for i = 2, #scored, 2 do
    highest = math.max(highest, tonumber(scored[i]) % 4294967296)
  end
  rcall("SET", qk .. ":pc", wholeText(highest + 1)) -- (SET replaces a value of any type)
  return highest + 1
end

local function addToPrioritized(qk, jobId, priority)
  local counter = redis.pcall("INCR", qk .. ":pc")
  if type(counter) ~= "number" then
    counter = restartPriorityCounter(qk)
  end
  local score = priority * 4294967296 + counter % 4294967296
  rcall("ZADD", qk .. ":prioritized", wholeText(score), jobId)
end

--- @include "includes/groups"

-- Puts a ready job where workers take it: the wait list (left = back of the
-- line, right = served next) or the prioritized set; a grouped job goes to its
-- group (priority does not apply there). `gid`: the job's group when the caller
-- knows it (false = none); nil looks it up.
local function enqueueReady(qk, jobId, priority, toFront, gid)
  if gid == nil then
    gid = rcall("HGET", qk .. ":" .. jobId, "gid")
  end
  if gid then
    enqueueGrouped(qk, jobId, gid, toFront)
  elseif priority > 0 then
    addToPrioritized(qk, jobId, priority)
  elseif toFront then
    rcall("RPUSH", qk .. ":wait", jobId)
  else
    rcall("LPUSH", qk .. ":wait", jobId)
  end
end

-- The group id in a job's stored options (decoded), or false.
--- @lazy
local function groupIdOf(opts)
  local group = opts.group
  return type(group) == "table" and type(group.id) == "string" and group.id
end

-- The queues whose job counter refuseForeignCounter found right in this script run.
local rightCounters = {}

-- Text at the job counter that INCR cannot raise (another client's): refused by name.
-- Started again, the counter would hand out the ids of jobs that exist (and an add
-- with an existing id adds nothing).
--- @lazy
local function refuseForeignCounter(qk, what)
  if rightCounters[qk] then
    return
  end
  local counter = rcall("GET", qk .. ":id")
  if counter and not string.find(counter, "^%-?%d+$") then
    error(redis.error_reply("ERR flowjobs: " .. qk .. ":id holds a string that is not a "
      .. "whole number (another client's value): nothing written, " .. what
      .. " left as it was; set it to the highest numeric job id in use"))
  end
  rightCounters[qk] = true
end

-- The queue's job counter, one up; another client's value there is refused by name.
local function nextJobCounter(qk, what)
  local counter = redis.pcall("INCR", qk .. ":id")
  if type(counter) ~= "number" then
    refuseForeignKey(qk .. ":id", "string", what)
    refuseForeignCounter(qk, what)
    error(counter)
  end
  return counter
end

-- The keys putting a new job of queue `qk` in place writes (waiting-children, delayed,
-- its group, prioritized, wait) and those every add writes (meta, the id counter). A
-- script that writes something before a job's place (an add's earlier jobs, a finish, a
-- scheduler's bookkeeping) checks them first; a lone add needs not, its place is its
-- first write.
--- @lazy
local function refuseForeignPlaceKeys(qk, waitChildren, delay, priority, gid, what)
  refuseForeignKey(qk .. ":meta", "hash", what)
  refuseForeignKey(qk .. ":id", "string", what)
  refuseForeignCounter(qk, what)
  if waitChildren then
    refuseForeignKey(qk .. ":waiting-children", "zset", what)
  elseif delay > 0 then
    refuseForeignKey(qk .. ":delayed", "zset", what)
  elseif gid then
    refuseForeignGroupKeys(qk, gid, what)
  elseif priority > 0 then
    refuseForeignKey(qk .. ":prioritized", "zset", what)
    refuseForeignKey(qk .. ":pc", "string", what)
  else
    refuseForeignKey(qk .. ":wait", "list", what)
  end
end

-- Score of a delayed job: due ms * 4096 plus a sequence that keeps FIFO order
-- among jobs due in the same millisecond.
--- @lazy
local function delayedScore(qk, dueMs)
  local base = dueMs * 4096
  local last = rcall("ZREVRANGEBYSCORE", qk .. ":delayed", base + 4095, base, "WITHSCORES", "LIMIT", 0, 1)
  if last[2] then
    return math.min(tonumber(last[2]) + 1, base + 4095)
  end
  return base
end

-- A delayed job in its set (placeDelayed), then told of (delayedPlaced): an add puts
-- the job in place before it writes the job's hash, and tells of it after.
--- @lazy
local function placeDelayed(qk, jobId, dueMs)
  rcall("ZADD", qk .. ":delayed", delayedScore(qk, dueMs), jobId)
end

--- @lazy
local function delayedPlaced(qk, jobId, dueMs)
  emit(qk, "delayed", "jobId", jobId, "delay", dueMs)
  addDelayMarker(qk)
end

--- @lazy
local function addDelayed(qk, jobId, dueMs)
  placeDelayed(qk, jobId, dueMs)
  delayedPlaced(qk, jobId, dueMs)
end

local function promoteDueJobs(qk, now)
  local ids = rcall("ZRANGEBYSCORE", qk .. ":delayed", "0", wholeText((now + 1) * 4096 - 1),
    "LIMIT", "0", "1000")
  if #ids == 0 then
    return
  end
  for _, jobId in ipairs(ids) do
    local jobKey = qk .. ":" .. jobId
    local fields = rcall("HMGET", jobKey, "priority", "gid")
    -- in line first: refused (a foreign value there), the job is still delayed
    enqueueReady(qk, jobId, tonumber(fields[1]) or 0, false, fields[2] or false)
    rcall("ZREM", qk .. ":delayed", jobId)
    emit(qk, "waiting", "jobId", jobId, "prev", "delayed")
    rcall("HSET", jobKey, "delay", "0")
  end
  if not isPausedOrMaxed(qk) then
    addWakeMarker(qk)
  end
end

-- Lock check for every move out of active: token "0" skips it (manual moves).
local function releaseLock(qk, jobKey, jobId, token)
  if token == "0" then
    return 0
  end
  local holder = rcall("GET", jobKey .. ":lock")
  if holder == token then
    rcall("DEL", jobKey .. ":lock")
    -- pcall: the stalled set only holds candidates for the stalled check (which refuses
    -- another client's value there); failing here would leave the move half-written
    redis.pcall("SREM", qk .. ":stalled", jobId)
    return 0
  end
  if holder then
    return -6
  end
  return -2
end

-- Every move out of active: the job exists, the caller holds its lock, and it is in
-- active. Returns 0 (lock released, job out of active) or the error code. gid: the
-- job's gid field when the caller read it already (false: it has none), else nil.
local function takeFromActive(qk, jobKey, jobId, token, gid)
  if rcall("EXISTS", jobKey) == 0 then
    return -1
  end
  if gid == nil then
    gid = rcall("HGET", jobKey, "gid")
  end
  if gid then
    refuseForeignGroupKeys(qk, gid, "job " .. jobId)
  end
  local lockResult = releaseLock(qk, jobKey, jobId, token)
  if lockResult ~= 0 then
    return lockResult
  end
  -- pcall: another client's value written at `active` while the job ran holds no job of
  -- ours; the job (its lock checked above) is out of active already, and its move goes
  -- on: refused, the job would be in no state
  local removed = redis.pcall("LREM", qk .. ":active", "-1", jobId)
  if removed == 0 then
    return -3
  end
  groupJobLeftActive(qk, jobKey, jobId, gid)
  -- a queue that was at its global concurrency wakes one idle worker for the freed slot
  local meta = queueMeta(qk)
  if meta[2] and not meta[1] and type(removed) == "number"
      and rcall("LLEN", qk .. ":active") + 1 == tonumber(meta[2]) then
    addWakeMarker(qk)
  end
  return 0
end

-- A job id whose key holds something other than a hash (a foreign producer's
-- list or string) cannot be run or recorded: the script that meets it takes it
-- out of active and reports it as failed on the events stream.
--- @lazy
local function reportNotAJob(qk, jobId, keyType, prev)
  emit(qk, "failed", "jobId", jobId, "failedReason",
    "the job key holds a " .. keyType .. ", not a job hash", "prev", prev)
end

local function removeJobKeys(jobKey)
  rcall("DEL", jobKey, jobKey .. ":logs", jobKey .. ":dependencies", jobKey .. ":processed",
    jobKey .. ":failed", jobKey .. ":unsuccessful")
end

-- Splits "<prefix>:<queue>:<id>" into the queue's qualified name and the id.
--- @lazy
local function splitJobKey(jobKey)
  local qk, jobId = string.match(jobKey, "^(.*):([^:]+)$")
  return qk, jobId
end
