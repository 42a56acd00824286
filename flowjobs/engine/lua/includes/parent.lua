--[[
  Parent bookkeeping when a child finishes (flows). Needs base.lua.
  A parent is addressed by its qualified queue name and id, read from the
  child's `parent` JSON ({id, queueKey, fpof|cpof|idof|rdof}) or, failing
  that, derived from `parentKey`.
]]

-- The parent a job's parentKey and parent fields name, or nil.
local function parentFrom(parentKey, parentJson)
  if not parentKey then
    return nil
  end
  local parent = {key = parentKey}
  if parentJson then
    local ok, decoded = pcall(cjson.decode, parentJson)
    if ok and type(decoded) == "table" then
      parent.id = decoded.id
      parent.qk = decoded.queueKey
      parent.fpof = decoded.fpof
      parent.cpof = decoded.cpof
      parent.idof = decoded.idof
      parent.rdof = decoded.rdof
    end
  end
  if not parent.qk or not parent.id then
    parent.qk, parent.id = splitJobKey(parentKey)
  end
  return parent
end

-- The parent of the job at jobKey, or nil.
local function parentOf(jobKey)
  local fields = rcall("HMGET", jobKey, "parentKey", "parent")
  return parentFrom(fields[1], fields[2])
end

-- Moves a parent out of waiting-children (or delayed) into its queue,
-- honouring its own delay and priority; it goes to the front of the line.
--- @lazy
local function releaseParent(parent, now, fromState)
  local fields = rcall("HMGET", parent.key, "priority", "delay")
  local priority = tonumber(fields[1]) or 0
  local delay = tonumber(fields[2]) or 0
  if delay > 0 and fromState ~= "delayed" then
    local due = now + delay
    rcall("ZADD", parent.qk .. ":delayed", due * 4096, parent.id)
    emit(parent.qk, "delayed", "jobId", parent.id, "delay", due)
    addDelayMarker(parent.qk)
    return
  end
  if priority > 0 then
    addToPrioritized(parent.qk, parent.id, priority)
  else
    rcall("RPUSH", parent.qk .. ":wait", parent.id)
  end
  emit(parent.qk, "waiting", "jobId", parent.id, "prev", fromState)
  if not isPausedOrMaxed(parent.qk) then
    addWakeMarker(parent.qk)
  end
end

-- The keys releaseParent writes or reads on the parent's queue, and those a failing
-- child's policy reads there (failed, delayed): checked before the first write of a
-- move that may release the parent (see refuseForeignKey).
--- @lazy
local function refuseForeignReleaseKeys(parent, what)
  local qk = parent.qk
  refuseForeignKey(qk .. ":waiting-children", "zset", what)
  refuseForeignKey(qk .. ":failed", "zset", what)
  refuseForeignKey(qk .. ":active", "list", what)
  refuseForeignPlaceKeys(qk, false, 1, 0, false, what) -- delayed
  local priority = tonumber(rcall("HGET", parent.key, "priority")) or 0
  refuseForeignPlaceKeys(qk, false, 0, priority, false, what) -- ready
end

-- A child's move that updates its parent (finish: `target` "completed" or "failed";
-- unlink: nil) writes the parent's dependencies set, the companion its outcome is
-- recorded in, and, when the child is the last one pending or its failure policy
-- releases the parent anyway, the parent's queue: all checked before the first write.
--- @lazy
local function refuseForeignParentKeys(parent, target, what)
  local dependencies = parent.key .. ":dependencies"
  refuseForeignKey(dependencies, "set", what)
  local releases = false
  if target == "completed" then
    refuseForeignKey(parent.key .. ":processed", "hash", what)
  elseif target == "failed" then
    if parent.fpof then
      refuseForeignKey(parent.key .. ":unsuccessful", "zset", what)
      releases = true
    elseif parent.cpof or parent.idof then
      refuseForeignKey(parent.key .. ":failed", "hash", what)
      releases = parent.cpof
    end
  end
  if releases or rcall("SCARD", dependencies) <= 1 then
    refuseForeignReleaseKeys(parent, what)
  end
end

--- @lazy
local function releaseParentIfReady(parent, now)
  if rcall("SCARD", parent.key .. ":dependencies") == 0 and rcall("EXISTS", parent.key) == 1
      and rcall("ZREM", parent.qk .. ":waiting-children", parent.id) == 1 then
    releaseParent(parent, now, "waiting-children")
  end
end

--- @lazy
local function onChildCompleted(parent, childKey, returnvalue, now)
  if rcall("SREM", parent.key .. ":dependencies", childKey) == 1 then
    rcall("HSET", parent.key .. ":processed", childKey, returnvalue)
    releaseParentIfReady(parent, now)
  end
end

--- @lazy
local function onChildFailed(parent, childKey, failedReason, now)
  if parent.fpof then
    rcall("SREM", parent.key .. ":dependencies", childKey)
    rcall("ZADD", parent.key .. ":unsuccessful", now, childKey)
    local reason = "child " .. childKey .. " failed"
    if rcall("ZREM", parent.qk .. ":waiting-children", parent.id) == 1 then
      rcall("HSET", parent.key, "defa", reason)
      releaseParent(parent, now, "waiting-children")
    elseif rcall("ZREM", parent.qk .. ":delayed", parent.id) == 1 then
      rcall("HSET", parent.key, "defa", reason, "delay", 0)
      releaseParent(parent, now, "delayed")
    elseif not rcall("ZSCORE", parent.qk .. ":failed", parent.id) then
      rcall("HSET", parent.key, "defa", reason)
    end
  elseif parent.cpof then
    rcall("SREM", parent.key .. ":dependencies", childKey)
    rcall("HSET", parent.key .. ":failed", childKey, failedReason)
    if rcall("ZREM", parent.qk .. ":waiting-children", parent.id) == 1 then
      releaseParent(parent, now, "waiting-children")
    end
  elseif parent.idof then
    if rcall("SREM", parent.key .. ":dependencies", childKey) == 1 then
      rcall("HSET", parent.key .. ":failed", childKey, failedReason)
      releaseParentIfReady(parent, now)
    end
  elseif parent.rdof then
    if rcall("SREM", parent.key .. ":dependencies", childKey) == 1 then
      releaseParentIfReady(parent, now)
    end
  end
end

-- A job removed by retention or removal stops being a pending dependency.
-- (The parent's keys are checked first: the removal's first write may be this one.)
local function unlinkFromParent(jobKey, now)
  local parent = parentOf(jobKey)
  if not parent then
    return
  end
  refuseForeignParentKeys(parent, nil, "job " .. jobKey)
  if rcall("SREM", parent.key .. ":dependencies", jobKey) == 1 then
    releaseParentIfReady(parent, now)
  end
end
