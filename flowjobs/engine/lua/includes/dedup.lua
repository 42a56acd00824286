--[[
  Deduplication (BullMQ's opts.de = {id, ttl?, extend?, replace?,
  keepLastIfActive?}). Needs base.lua and enqueue.lua.

  `<qk>:de:<id>` holds the id of the job that owns the deduplication id;
  `<qk>:dn:<id>` (keepLastIfActive) holds the latest job that arrived while
  the owner was active, turned into a real job when the owner finishes.
  Modes: simple (no ttl: owned until the owner finishes or is removed),
  throttle (ttl: owned for ttl ms), debounce (ttl + extend: every duplicate
  restarts the ttl), replace (a still-delayed owner is replaced by the new job).
]]

--- @lazy
local function ownDedupKey(dedupKey, jobId, de)
  local ttl = tonumber(de.ttl)
  if ttl and ttl > 0 and not de.keepLastIfActive then
    rcall("SET", dedupKey, jobId, "PX", ttl)
  else
    rcall("SET", dedupKey, jobId)
  end
end

--- @lazy
local function emitDeduplicated(qk, keptId, dedupId, droppedId)
  emit(qk, "deduplicated", "jobId", keptId, "deduplicationId", dedupId, "deduplicatedJobId", droppedId)
end

-- An owner key without ttl whose job no longer exists (lost in an outage) is
-- stale: the new job takes it over.
--- @lazy
local function takeOverStaleDedupKey(qk, dedupKey, de, ownerId, jobId)
  if rcall("PTTL", dedupKey) == -1 and rcall("EXISTS", qk .. ":" .. ownerId) == 0 then
    rcall("DEL", qk .. ":dn:" .. de.id)
    ownDedupKey(dedupKey, jobId, de)
    return true
  end
  return false
end

-- keepLastIfActive: while the owner is active, remember the newest attempt
-- (overwriting any earlier one) so it runs after the owner.
--- @lazy
local function keepIfOwnerActive(qk, de, ownerId, jobId, spec)
  if not de.keepLastIfActive or not rcall("LPOS", qk .. ":active", ownerId) then
    return false
  end
  local nextKey = qk .. ":dn:" .. de.id
  local fields = {"name", spec.name, "data", spec.data, "opts", spec.opts, "jid", jobId}
  if spec.rjk and spec.rjk ~= cjson.null then
    fields[#fields + 1] = "rjk"
    fields[#fields + 1] = spec.rjk
  end
  rcall("DEL", nextKey)
  rcall("HSET", nextKey, unpack(fields))
  rcall("PERSIST", qk .. ":de:" .. de.id)
  emitDeduplicated(qk, ownerId, de.id, jobId)
  return true
end

-- Returns the id of the job kept instead of `jobId` (nothing to store), or
-- nil when the new job goes ahead.
--- @lazy
local function deduplicateJob(qk, spec, jobId)
  local de = spec.de
  local dedupKey = qk .. ":de:" .. de.id
  local ttl = tonumber(de.ttl)
  local ownerId

  if de.replace then
    ownerId = rcall("GET", dedupKey)
    if not ownerId then
      ownDedupKey(dedupKey, jobId, de)
      return nil
    end
    if rcall("ZREM", qk .. ":delayed", ownerId) == 1 then
      removeJobKeys(qk .. ":" .. ownerId)
      emit(qk, "removed", "jobId", ownerId, "prev", "delayed")
      emitDeduplicated(qk, jobId, de.id, ownerId)
      rcall("DEL", qk .. ":dn:" .. de.id)
      if ttl and ttl > 0 and not de.extend and not de.keepLastIfActive then
        rcall("SET", dedupKey, jobId, "KEEPTTL")
      else
        ownDedupKey(dedupKey, jobId, de)
      end
      return nil
    end
    if takeOverStaleDedupKey(qk, dedupKey, de, ownerId, jobId) then
      return nil
    end
    keepIfOwnerActive(qk, de, ownerId, jobId, spec)
    return ownerId
  end

  if ttl and ttl > 0 and de.extend then
    ownerId = rcall("GET", dedupKey)
    if not ownerId then
      ownDedupKey(dedupKey, jobId, de)
      return nil
    end
  else
    local claimed
    if ttl and ttl > 0 and not de.keepLastIfActive then
      claimed = rcall("SET", dedupKey, jobId, "PX", ttl, "NX")
    else
      claimed = rcall("SET", dedupKey, jobId, "NX")
    end
    if claimed then
      return nil
    end
    ownerId = rcall("GET", dedupKey)
  end
  if takeOverStaleDedupKey(qk, dedupKey, de, ownerId, jobId) then
    return nil
  end
  if keepIfOwnerActive(qk, de, ownerId, jobId, spec) then
    return ownerId
  end
  if ttl and ttl > 0 and de.extend then
    ownDedupKey(dedupKey, ownerId, de)
  end
  emitDeduplicated(qk, ownerId, de.id, jobId)
  return ownerId
end

-- The job waiting at `dn:<dedupId>` (keepLastIfActive) as finishDeduplicated stores
-- it, or false: {fields, opts, delay, priority, gid}.
--- @lazy
local function pendingDedupJob(qk, dedupId)
  local nextKey = qk .. ":dn:" .. dedupId
  if rcall("EXISTS", nextKey) == 0 then
    return false
  end
  refuseForeignKey(nextKey, "hash", "the deduplicated job " .. dedupId)
  local f = rcall("HMGET", nextKey, "name", "data", "opts", "pk", "pd", "pdk", "rjk", "jid")
  local opts = cjson.decode(f[3])
  return {fields = f, opts = opts, delay = tonumber(opts.delay) or 0,
    priority = tonumber(opts.priority) or 0, gid = groupIdOf(opts)}
end

-- The keys finishDeduplicated writes, checked before the finishing job's first write:
-- the owner key and, for a pending job, where it goes (and its parent's set). Returns
-- that pending job (pendingDedupJob) for finishDeduplicated.
--- @lazy
local function refuseForeignDedupKeys(qk, dedupId, what)
  refuseForeignKey(qk .. ":de:" .. dedupId, "string", what)
  local pending = pendingDedupJob(qk, dedupId)
  if pending then
    refuseForeignPlaceKeys(qk, false, pending.delay, pending.priority, pending.gid, what)
    if pending.fields[6] then
      refuseForeignKey(pending.fields[6], "set", what)
    end
  end
  return pending
end

-- When a job with a deduplication id finishes: release the key it owns
-- (unless a ttl still runs), then turn a pending `dn:` job into a real one.
-- pending: what refuseForeignDedupKeys returned.
--- @lazy
local function finishDeduplicated(qk, dedupId, jobId, now, pending)
  local dedupKey = qk .. ":de:" .. dedupId
  local ttl = rcall("PTTL", dedupKey)
  if ttl == 0 or (ttl == -1 and rcall("GET", dedupKey) == jobId) then
    rcall("DEL", dedupKey)
  end
  if not pending then
    return
  end
  local f, opts = pending.fields, pending.opts
  local counter = nextJobCounter(qk, "job " .. jobId)
  local newId = f[8] or tostring(counter)
  local de = type(opts.de) == "table" and opts.de or {}
  ownDedupKey(dedupKey, newId, de)
  local extra = {"deid", dedupId}
  if f[4] then
    extra[#extra + 1] = "parentKey"
    extra[#extra + 1] = f[4]
  end
  if f[5] then
    extra[#extra + 1] = "parent"
    extra[#extra + 1] = f[5]
  end
  if f[7] then
    extra[#extra + 1] = "rjk"
    extra[#extra + 1] = f[7]
  end
  if pending.gid then
    extra[#extra + 1] = "gid"
    extra[#extra + 1] = pending.gid
  end
  storeAndEnqueue(qk, newId, f[1], f[2], f[3], now, pending.delay, pending.priority,
    opts.lifo == true, extra)
  if f[6] then
    rcall("SADD", f[6], qk .. ":" .. newId)
  end
  rcall("DEL", qk .. ":dn:" .. dedupId)
end
