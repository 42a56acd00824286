--[[
  Job schedulers: `<qk>:repeat` (zset: scheduler id -> ms of its pending
  iteration) and `<qk>:repeat:<id>` (hash: the definition). An iteration is
  the job `repeat:<id>:<ms>`. Needs base.lua and enqueue.lua.
]]

-- Next run of an `every` scheduler (ms, floored) and the offset it keeps to:
-- the first run is at startDate, at the next slot shifted by offset, or now;
-- later runs follow the previous one, catching up to the current slot when
-- runs were missed.
--- @lazy
local function everyNextMillis(prevMillis, every, now, offset, startDate)
  offset = tonumber(offset)
  local nextMillis
  if not prevMillis then
    if startDate then
      nextMillis = math.max(tonumber(startDate), now)
    elseif offset and offset > 0 then
      nextMillis = math.floor(now / every) * every + offset
      if nextMillis <= now then
        nextMillis = nextMillis + every
      end
    else
      nextMillis = now
    end
  else
    nextMillis = prevMillis + every
    if nextMillis < now then
      local slot = math.floor(now / every) * every + (offset or 0)
      if slot <= now then
        nextMillis = slot + every
      else
        nextMillis = slot
      end
    end
  end
  if not offset or offset == 0 then
    offset = nextMillis - math.floor(nextMillis / every) * every
  end
  return math.floor(nextMillis), math.floor(offset)
end

-- The keys a scheduler's upsert, run-making, pause or removal writes: its entry in
-- `repeat`, its definition, where its pending run may be taken from (delayed,
-- prioritized, wait) and, given the run's options, where a new run goes. Checked before
-- the first write (see refuseForeignKey): a refusal after it left a run in no state, or
-- a scheduler without its run.
--- @lazy
local function refuseForeignSchedulerKeys(qk, schedulerId, opts, what)
  refuseForeignKey(qk .. ":repeat", "zset", what)
  refuseForeignKey(qk .. ":repeat:" .. schedulerId, "hash", what)
  refuseForeignPlaceKeys(qk, false, 1, 0, false, what) -- delayed
  refuseForeignPlaceKeys(qk, false, 0, 1, false, what) -- prioritized
  refuseForeignPlaceKeys(qk, false, 0, 0, false, what) -- wait
  if opts then
    refuseForeignPlaceKeys(qk, false, 0, tonumber(opts.priority) or 0, groupIdOf(opts), what)
  end
end

-- Stores and enqueues iteration `jobId` of scheduler `schedulerId`: the
-- template data, and the iteration options (which carry repeat, prevMillis
-- and repeatJobKey so any worker, Node's included, can produce the next one).
--- @lazy
local function addIteration(qk, schedulerId, jobId, name, data, opts, now, delay)
  opts.delay = delay
  opts.jobId = jobId
  local priority = tonumber(opts.priority) or 0
  local extra = {"rjk", schedulerId}
  local gid = groupIdOf(opts)
  if gid then
    extra[#extra + 1] = "gid"
    extra[#extra + 1] = gid
  end
  storeAndEnqueue(qk, jobId, name, data, cjson.encode(opts), now, delay, priority,
    opts.lifo == true, extra)
end
