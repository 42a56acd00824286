--[[
  Adds one or more jobs (a single add, an add_bulk, or every node of one or
  more flow trees in pre-order) in one atomic step: every precondition is
  checked before the first write, so on error nothing is written.

  KEYS[1]  meta key of the first job's queue (routing only)
  KEYS[2]  optional: the push receipt of a flowjobs outbox entry
  ARGV[1]  number of jobs n; then for job i = 1..n three values:
           spec JSON {qk, id ("" = auto), name, ts, delay, priority, lifo,
                      parentKey?, parent? {id, queueKey, fpof|cpof|idof|rdof},
                      waitChildren?, rjk?, de? {id, ttl?, extend?, replace?,
                      keepLastIfActive?}, gid? (group id)},
           data JSON text, opts JSON text
           with KEYS[2]: then the push deadline (ms, Redis clock) and the receipt's TTL (ms)
  Returns  {0, ids...} or {errorCode, index}:
           -5 parent missing, -7 existing job attached to another parent;
           with KEYS[2] also {1} already pushed (receipt exists), {2} deadline passed:
           both write nothing. A receipt makes a repeated push of one outbox entry add
           nothing even after its jobs were removed; the deadline stops a pusher that
           read the entry long ago (paused, partitioned) from pushing it after its
           receipt is gone.
  Events   added, then waiting | delayed | waiting-children; duplicated;
           deduplicated (and removed for a replaced delayed job)
]]
--- @include "includes/base"
--- @include "includes/parent"
--- @include "includes/enqueue"
--- @include "includes/dedup"

local count = tonumber(ARGV[1])
local receiptKey = KEYS[2]
if receiptKey then
  if redis.replicate_commands then
    redis.replicate_commands() -- TIME before writes (a no-op on Redis 7)
  end
  local now = rcall("TIME")
  if tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000) > tonumber(ARGV[3 * count + 2]) then
    return {2}
  end
  if rcall("EXISTS", receiptKey) == 1 then
    return {1}
  end
end
local jobs = {}
local created = {}
for i = 1, count do
  local spec = cjson.decode(ARGV[3 * i - 1])
  spec.data = ARGV[3 * i]
  spec.opts = ARGV[3 * i + 1]
  jobs[i] = spec
  if spec.parentKey == cjson.null then
    spec.parentKey = nil
  end
  if spec.id ~= "" then
    local jobKey = spec.qk .. ":" .. spec.id
    if created[jobKey] or rcall("EXISTS", jobKey) == 1 then
      spec.duplicate = true
      if spec.parentKey and not created[jobKey] then
        local current = rcall("HGET", jobKey, "parentKey")
        if current and current ~= spec.parentKey and rcall("EXISTS", current) == 1 then
          return {-7, i}
        end
      end
    end
    created[jobKey] = true
  end
  if spec.parentKey and not created[spec.parentKey] and rcall("EXISTS", spec.parentKey) ~= 1 then
    return {-5, i}
  end
end
-- Every key the jobs are written to is checked before the first write (see
-- refuseForeignKey): a later job refused there left the earlier ones written (all or
-- none), a child unlinked, a deduplication id claimed by no job. The first job's place
-- is its first write, and tells for every job that goes where it goes: a plain add, or
-- a bulk of them, is not asked about.
local function placeOf(spec)
  if spec.waitChildren then
    return spec.qk .. ":waiting-children"
  elseif tonumber(spec.delay) > 0 then
    return spec.qk .. ":delayed"
  elseif type(spec.gid) == "string" then
    return spec.qk .. ":group:" .. spec.gid
  end
  return spec.qk .. (tonumber(spec.priority) > 0 and ":prioritized" or ":wait")
end
local firstPlace = count > 0 and not jobs[1].duplicate and placeOf(jobs[1])
for _, spec in ipairs(jobs) do
  local what = spec.id ~= "" and "job " .. spec.id or "the new jobs"
  if spec.duplicate and spec.parentKey then -- a completed one releases its new parent
    local parent = {key = spec.parentKey, id = spec.parent.id, qk = spec.parent.queueKey}
    refuseForeignParentKeys(parent, "completed", what)
  elseif spec.parentKey then
    refuseForeignKey(spec.parentKey .. ":dependencies", "set", what)
  end
  local de = not spec.duplicate and type(spec.de) == "table" and spec.de
  if de then
    refuseForeignKey(spec.qk .. ":de:" .. de.id, "string", what)
    if de.replace then
      refuseForeignKey(spec.qk .. ":delayed", "zset", what)
    end
    if de.keepLastIfActive then
      refuseForeignKey(spec.qk .. ":active", "list", what)
    end
  end
  if not spec.duplicate and (spec.parentKey or de or placeOf(spec) ~= firstPlace) then
    local priority = tonumber(spec.priority)
    refuseForeignPlaceKeys(spec.qk, spec.waitChildren, tonumber(spec.delay), priority,
      type(spec.gid) == "string" and spec.gid, what)
  end
end

local result = {0}
for i, spec in ipairs(jobs) do
  local qk = spec.qk
  maxEvents(qk) -- reads the meta hash (kept for the events) before the first write
  local counter = nextJobCounter(qk, "the new jobs")
  local jobId = spec.id
  if jobId == "" then
    jobId = wholeText(counter)
  end
  local jobKey = qk .. ":" .. jobId
  local parentJson = nil
  if spec.parentKey then
    parentJson = cjson.encode(spec.parent)
  end

  -- deduplication may keep another job instead of this one (nothing stored)
  local keptId = nil
  if not spec.duplicate and type(spec.de) == "table" then
    keptId = deduplicateJob(qk, spec, jobId)
  end

  if keptId then
    jobId = keptId
  elseif spec.duplicate then
    if spec.parentKey then
      local current = rcall("HGET", jobKey, "parentKey")
      if not current or current == spec.parentKey then
        local parent = {key = spec.parentKey, id = spec.parent.id, qk = spec.parent.queueKey}
        if rcall("ZSCORE", qk .. ":completed", jobId) then
          local value = rcall("HGET", jobKey, "returnvalue") or "null"
          rcall("HSET", spec.parentKey .. ":processed", jobKey, value)
          releaseParentIfReady(parent, tonumber(spec.ts))
        else
          rcall("SADD", spec.parentKey .. ":dependencies", jobKey)
        end
        rcall("HSET", jobKey, "parentKey", spec.parentKey, "parent", parentJson)
      end
    end
    emit(qk, "duplicated", "jobId", jobId)
  else
    local fields = {"name", spec.name, "data", spec.data, "opts", spec.opts, "timestamp", spec.ts,
      "delay", spec.delay, "priority", spec.priority}
    if spec.parentKey then
      table.insert(fields, "parentKey")
      table.insert(fields, spec.parentKey)
      table.insert(fields, "parent")
      table.insert(fields, parentJson)
    end
    if spec.rjk and spec.rjk ~= cjson.null then
      table.insert(fields, "rjk")
      table.insert(fields, spec.rjk)
    end
    if type(spec.de) == "table" then
      table.insert(fields, "deid")
      table.insert(fields, spec.de.id)
    end
    if type(spec.gid) == "string" then
      table.insert(fields, "gid")
      table.insert(fields, spec.gid)
    end
    local delay = tonumber(spec.delay)
    local priority = tonumber(spec.priority)
    -- In place before the hash: a place that refuses the job (another client's value at
    -- its key) leaves no job hash, which a retry with the same id would take for the job
    -- added (see refuseForeignKey). Told of (events, markers) after.
    if spec.waitChildren then
      rcall("ZADD", qk .. ":waiting-children", spec.ts, jobId)
    elseif delay > 0 then
      placeDelayed(qk, jobId, tonumber(spec.ts) + delay)
    else
      enqueueReady(qk, jobId, priority, spec.lifo and priority == 0,
        type(spec.gid) == "string" and spec.gid)
    end
    rcall("HSET", jobKey, unpack(fields))
    emit(qk, "added", "jobId", jobId, "name", spec.name)
    if spec.waitChildren then
      emit(qk, "waiting-children", "jobId", jobId)
    elseif delay > 0 then
      delayedPlaced(qk, jobId, tonumber(spec.ts) + delay)
    else
      if not isPausedOrMaxed(qk) then
        addWakeMarker(qk)
      end
      emit(qk, "waiting", "jobId", jobId)
    end
    if spec.parentKey then
      rcall("SADD", spec.parentKey .. ":dependencies", jobKey)
    end
  end
  result[#result + 1] = jobId
end
if receiptKey then
  rcall("SET", receiptKey, "1", "PX", ARGV[3 * count + 3])
end
return result
