--[[
  Taking jobs from a queue (moveToActive), shared by move_to_active and the
  fetch-next path of the finishing scripts. Needs base.lua (and its groups.lua).
  Returns {jobs, rateLimitDelayMs, nextDueMs} where jobs is a list of
  {jobId, flatHash} and nextDueMs the earliest delayed job or rate-limited
  group.
]]

-- The next ungrouped ready job, moved to active: wait first, then prioritized.
-- With group limits set, a grouped job found there goes to its group instead.
local function takePlain(qk, rerouteGrouped)
  local waitKey, activeKey = qk .. ":wait", qk .. ":active"
  while true do
    local jobId = rcall("RPOPLPUSH", waitKey, activeKey)
    if jobId and string.sub(jobId, 1, 2) == "0:" then
      rcall("LREM", activeKey, "1", jobId)
      jobId = rcall("RPOPLPUSH", waitKey, activeKey)
    end
    if not jobId then
      local popped = rcall("ZPOPMIN", qk .. ":prioritized")
      if not popped[1] then
        rcall("DEL", qk .. ":pc")
        return nil
      end
      jobId = popped[1]
      rcall("LPUSH", activeKey, jobId)
    end
    local gid = rerouteGrouped and rcall("HGET", qk .. ":" .. jobId, "gid")
    if not gid then
      return jobId
    end
    rcall("LREM", activeKey, "1", jobId)
    rcall("SREM", groupKey(qk, gid, "active"), jobId)
    enqueueGrouped(qk, jobId, gid, true)
  end
end

-- The next job in round-robin order over the groups (and the plain queue),
-- moved to active; nil when no group can run now.
--- @lazy
local function takeFromRing(qk, limits, now, rerouteGrouped)
  local ring = qk .. ":groups:ready"
  for _ = 1, rcall("ZCARD", ring) do
    local member = rcall("ZPOPMIN", ring)[1]
    if not member then
      return nil
    end
    if member == plainTurn then
      local jobId = takePlain(qk, rerouteGrouped)
      if rcall("ZCARD", ring) > 0 then
        giveTurn(qk, plainTurn)
      end
      if jobId then
        return jobId
      end
    else
      local jobId = takeFromGroup(qk, member, limits, now)
      if jobId then
        rcall("LPUSH", qk .. ":active", jobId)
        return jobId
      end
    end
  end
  return nil
end

-- nowText, lockDuration: the caller's text (see base.lua on numbers as arguments).
-- A last token marked "?" is for a job taken ahead (a worker's slot runs it after the
-- job it runs now): not used while the queue has a global or group concurrency or a
-- group rate limit, where a job held that way would keep another worker from one.
local function fetchJobs(qk, nowText, tokens, lockDuration, limiterMax, limiterDuration, workerName)
  local now = tonumber(nowText)
  local meta = queueMeta(qk)
  promoteDueJobs(qk, now)

  local last = tokens[#tokens]
  if last and string.sub(last, 1, 1) == "?" then
    if meta[2] or meta[5] or meta[6] then
      tokens[#tokens] = nil
    else
      tokens[#tokens] = string.sub(last, 2)
    end
  end
  local budget = #tokens
  local maxJobs = tonumber(meta[3]) or limiterMax
  local limiterKey = qk .. ":limiter"
  local used = 0
  if maxJobs then
    used = limiterUsed(limiterKey)
    if used >= maxJobs then
      local ttl = rcall("PTTL", limiterKey)
      if ttl > 0 then
        return {{}, ttl, 0}
      end
      rcall("DEL", limiterKey)
      used = 0
    end
    budget = math.min(budget, maxJobs - used)
  end
  if meta[1] then
    return {{}, 0, 0}
  end
  if meta[2] then
    budget = math.min(budget, tonumber(meta[2]) - rcall("LLEN", qk .. ":active"))
  end

  local jobs = {}
  local limits = groupLimits(meta[5], meta[6], meta[7])
  local reroute = limits.concurrency ~= nil or limits.max ~= nil
  -- one EXISTS tells a queue that never had groups (the common case) from one that has
  local grouped = rcall("EXISTS", qk .. ":groups:ready", qk .. ":groups:maxed",
    qk .. ":groups:limited") > 0
  if grouped then
    refuseForeignGroupKeys(qk, nil, "the jobs to fetch")
    releaseLimitedGroups(qk, now)
    grouped = rcall("ZCARD", qk .. ":groups:ready") > 0
      or rcall("EXISTS", qk .. ":groups:maxed") == 1
  end
  local healed = false
  while #jobs < budget do
    local jobId
    if grouped then
      jobId = takeFromRing(qk, limits, now, reroute)
      if not jobId and not healed then
        healed = true
        if healMaxedGroups(qk, limits) then
          jobId = takeFromRing(qk, limits, now, reroute)
        end
      end
    end
    if not jobId then
      jobId = takePlain(qk, reroute)
    end
    if not jobId then
      break
    end
    local jobKey = qk .. ":" .. jobId
    local written
    if workerName then
      written = redis.pcall("HSET", jobKey, "processedOn", nowText, "pb", workerName)
    else
      written = redis.pcall("HSET", jobKey, "processedOn", nowText)
    end
    if type(written) == "table" and written.err then
      rcall("LREM", qk .. ":active", "1", jobId)
      reportNotAJob(qk, jobId, rcall("TYPE", jobKey)["ok"], "waiting")
    else
      local token = tokens[#jobs + 1]
      if token ~= "0" then
        rcall("SET", jobKey .. ":lock", token, "PX", lockDuration)
      end
      emit(qk, "active", "jobId", jobId, "prev", "waiting")
      incrementCounter(jobKey, "ats")
      jobs[#jobs + 1] = {jobId, rcall("HGETALL", jobKey)}
    end
  end

  if #jobs > 0 then
    if maxJobs then
      if rcall("INCRBY", limiterKey, #jobs) == #jobs then
        rcall("PEXPIRE", limiterKey, math.floor(math.abs(limiterDuration or tonumber(meta[4]) or 0)))
      end
    end
    addWakeMarker(qk)
    return {jobs, 0, 0}
  end
  local nextDue = 0
  local first = rcall("ZRANGE", qk .. ":delayed", "0", "0", "WITHSCORES")
  if first[2] then
    nextDue = math.floor(tonumber(first[2]) / 4096)
  end
  local limited = rcall("ZRANGE", qk .. ":groups:limited", "0", "0", "WITHSCORES")
  if limited[2] and (nextDue == 0 or tonumber(limited[2]) < nextDue) then
    nextDue = tonumber(limited[2])
  end
  return {{}, 0, nextDue}
end

-- The fetch-next tail of a finishing script. ARGV[at], ARGV[at + 1], ARGV[at + 2]: lock
-- duration, limiter max and duration; ARGV[at + 3]: the worker's name ("" for none);
-- ARGV[at + 4 ..]: one token per free slot (none: no fetch). Returns fetchJobs' reply when
-- it took jobs or says when to look again, else nil.
local function fetchNextFromArgv(qk, nowText, at)
  if #ARGV < at + 4 then
    return nil
  end
  local tokens = {}
  for i = at + 4, #ARGV do
    tokens[#tokens + 1] = ARGV[i]
  end
  local name = ARGV[at + 3]
  if name == "" then
    name = nil
  end
  -- pcall: the finish before it is written, and a fetch refused by another client's value
  -- (at wait, active, ...) must not turn it into an error; the worker's own fetch reports it
  local ok, fetched = pcall(function()
    return fetchJobs(qk, nowText, tokens, ARGV[at], tonumber(ARGV[at + 1]),
      tonumber(ARGV[at + 2]), name)
  end)
  if not ok then
    return nil
  end
  if #fetched[1] > 0 or fetched[2] > 0 or fetched[3] > 0 then
    return fetched
  end
  return nil
end
