--[[
  Removing jobs and whole sub-trees. Needs base.lua and parent.lua.
]]

local stateSuffixes = {"completed", "waiting-children", "delayed", "failed", "prioritized"}

-- Takes a job out of whichever state holds it; returns that state's name.
--- @lazy
local function takeOutOfState(qk, jobId)
  for _, suffix in ipairs(stateSuffixes) do
    if rcall("ZREM", qk .. ":" .. suffix, jobId) == 1 then
      return suffix
    end
  end
  for _, suffix in ipairs({"wait", "paused", "active"}) do
    if rcall("LREM", qk .. ":" .. suffix, 0, jobId) > 0 then
      return suffix
    end
  end
  -- a grouped job waits in its group's list (groups.lua)
  local gid = rcall("HGET", qk .. ":" .. jobId, "gid")
  if gid then
    local groupWait = groupKey(qk, gid, "wait")
    refuseForeignKey(groupWait, "list", "job " .. jobId) -- (names the key)
    if rcall("LREM", groupWait, 0, jobId) > 0 then
      return "wait"
    end
  end
  return "unknown"
end

--- @lazy
local function childKeysOf(jobKey)
  local keys = rcall("HKEYS", jobKey .. ":processed")
  for _, key in ipairs(rcall("HKEYS", jobKey .. ":failed")) do
    keys[#keys + 1] = key
  end
  for _, key in ipairs(rcall("ZRANGE", jobKey .. ":unsuccessful", 0, -1)) do
    keys[#keys + 1] = key
  end
  for _, key in ipairs(rcall("SMEMBERS", jobKey .. ":dependencies")) do
    keys[#keys + 1] = key
  end
  return keys
end

--- @lazy
local function isLockedTree(jobKey, withChildren)
  if rcall("EXISTS", jobKey .. ":lock") == 1 then
    return true
  end
  if withChildren then
    for _, childKey in ipairs(childKeysOf(jobKey)) do
      if isLockedTree(childKey, true) then
        return true
      end
    end
  end
  return false
end

-- pcall: a value GET refuses (another client's hash there) is no claim of this job's;
-- it is left as it is, and the removal goes on (it had taken the job out of its state).
--- @lazy
local function releaseDedupKey(qk, jobKey, jobId)
  local dedupId = rcall("HGET", jobKey, "deid")
  if dedupId then
    local dedupKey = qk .. ":de:" .. dedupId
    if redis.pcall("GET", dedupKey) == jobId then
      rcall("DEL", dedupKey, qk .. ":dn:" .. dedupId)
    end
  end
end

--- @lazy
local function removeTree(qk, jobId, withChildren, now)
  local jobKey = qk .. ":" .. jobId
  unlinkFromParent(jobKey, now)
  if withChildren then
    for _, childKey in ipairs(childKeysOf(jobKey)) do
      local childQk, childId = splitJobKey(childKey)
      -- the child no longer counts as ours: avoid releasing this parent
      rcall("HDEL", childKey, "parentKey", "parent")
      removeTree(childQk, childId, true, now)
    end
  end
  local prev = takeOutOfState(qk, jobId)
  releaseDedupKey(qk, jobKey, jobId)
  local existed = rcall("EXISTS", jobKey) == 1
  removeJobKeys(jobKey)
  if existed then
    emit(qk, "removed", "jobId", jobId, "prev", prev)
  end
end

-- Hard removal used by clean/drain/obliterate: no per-job events.
--- @lazy
local function removeQuietly(qk, jobId, now)
  local jobKey = qk .. ":" .. jobId
  unlinkFromParent(jobKey, now)
  releaseDedupKey(qk, jobKey, jobId)
  removeJobKeys(jobKey)
end

-- The pending iteration of a job scheduler is protected from removal.
--- @lazy
local function isCurrentSchedulerIteration(qk, jobId)
  local rjk = rcall("HGET", qk .. ":" .. jobId, "rjk")
  if not rjk then
    return false
  end
  local score = rcall("ZSCORE", qk .. ":repeat", rjk)
  return score ~= false and score ~= nil and jobId == ("repeat:" .. rjk .. ":" .. score)
end
