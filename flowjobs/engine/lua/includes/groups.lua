--[[
  Job groups (opts.group = {id}): per-group concurrency and rate limits, and
  round-robin between groups (see docs/groups.md). Included by base.lua,
  after its marker helpers. A grouped job carries the hash field `gid`.

  <qk>:group:<gid>:wait     list  the group's ready jobs (left = back of the line)
  <qk>:group:<gid>:active   set   its jobs in active
  <qk>:group:<gid>:limiter  string jobs taken in the current window (PX = window)
  <qk>:groups:ready         zset  groups whose turn may come, by turn number;
                                  ":plain" stands for the ungrouped wait list
  <qk>:groups:turn          string the turn counter
  <qk>:groups:maxed         set   groups at their concurrency (back when a job leaves)
  <qk>:groups:limited       zset  rate-limited groups, by the ms they may run again
  Settings (meta): groupConcurrency, groupMax, groupDuration.

  Grouped jobs never sit in `wait`, so BullMQ workers (which know no groups)
  leave them alone. A grouped job that lands in `wait` through a path that does
  not know groups (stalled recovery, move back to wait, retry of a failed job)
  is moved to its group by the next flowjobs fetch when group limits are set.
]]

local plainTurn = ":plain"

--- @lazy
local function groupKey(qk, gid, suffix)
  return qk .. ":group:" .. gid .. ":" .. suffix
end

-- A move of a grouped job (or the fetch's, gid nil) reads and writes the queue's
-- shared group keys and, with `gid`, that group's own: refused before it writes when
-- another client's value is at one of them (see refuseForeignKey in base.lua).
--- @lazy
local function refuseForeignGroupKeys(qk, gid, what)
  refuseForeignKey(qk .. ":groups:ready", "zset", what)
  refuseForeignKey(qk .. ":groups:maxed", "set", what)
  refuseForeignKey(qk .. ":groups:limited", "zset", what)
  if gid then
    refuseForeignKey(groupKey(qk, gid, "wait"), "list", what)
    refuseForeignKey(groupKey(qk, gid, "active"), "set", what)
  end
end

-- The next turn number. A value at the counter that INCR refuses (another client's)
-- is replaced, and the numbering goes on after the ring's last turn.
--- @lazy
local function nextTurn(qk)
  local turnKey = qk .. ":groups:turn"
  local turn = redis.pcall("INCR", turnKey)
  if type(turn) == "number" then
    return wholeText(turn)
  end
  local last = rcall("ZRANGE", qk .. ":groups:ready", "-1", "-1", "WITHSCORES")
  turn = wholeText((tonumber(last[2]) or 0) + 1)
  rcall("SET", turnKey, turn) -- (SET replaces a value of any type)
  return turn
end

-- Gives group `gid` (or the plain queue) a turn after everyone already waiting.
--- @lazy
local function giveTurn(qk, member)
  local ring = qk .. ":groups:ready"
  if rcall("ZSCORE", ring, member) then
    return
  end
  if member ~= plainTurn and rcall("ZCARD", ring) == 0 then
    -- ungrouped jobs take part in the round-robin too
    rcall("ZADD", ring, nextTurn(qk), plainTurn)
  end
  rcall("ZADD", ring, nextTurn(qk), member)
end

--- @lazy
local function groupIsHeld(qk, gid)
  return rcall("SISMEMBER", qk .. ":groups:maxed", gid) == 1
    or rcall("ZSCORE", qk .. ":groups:limited", gid) ~= false
end

--- @lazy
local function enqueueGrouped(qk, jobId, gid, toFront)
  refuseForeignGroupKeys(qk, gid, "job " .. jobId)
  if toFront then
    rcall("RPUSH", groupKey(qk, gid, "wait"), jobId)
  else
    rcall("LPUSH", groupKey(qk, gid, "wait"), jobId)
  end
  if not groupIsHeld(qk, gid) then
    giveTurn(qk, gid)
  end
end

-- A grouped job left active: its group may have a free slot again. gid: the job's gid
-- field when the caller read it already (false: it has none), else nil.
local function groupJobLeftActive(qk, jobKey, jobId, gid)
  if gid == nil then
    gid = rcall("HGET", jobKey, "gid")
  end
  if not gid then
    return
  end
  rcall("SREM", groupKey(qk, gid, "active"), jobId)
  if rcall("SREM", qk .. ":groups:maxed", gid) == 1 and rcall("LLEN", groupKey(qk, gid, "wait")) > 0
      and not rcall("ZSCORE", qk .. ":groups:limited", gid) then
    giveTurn(qk, gid)
    if not isPausedOrMaxed(qk) then
      addWakeMarker(qk)
    end
  end
end

-- --- taking grouped jobs (fetch) ---------------------------------------------------

-- Group limits from meta fields groupConcurrency, groupMax, groupDuration.
local function groupLimits(concurrency, max, duration)
  return {concurrency = tonumber(concurrency), max = tonumber(max), duration = tonumber(duration)}
end

-- Rate-limited groups whose window has passed get a turn again.
--- @lazy
local function releaseLimitedGroups(qk, now)
  local limitedKey = qk .. ":groups:limited"
  local due = rcall("ZRANGEBYSCORE", limitedKey, 0, now, "LIMIT", 0, 1000)
  for _, gid in ipairs(due) do
    rcall("ZREM", limitedKey, gid)
    if rcall("LLEN", groupKey(qk, gid, "wait")) > 0 then
      giveTurn(qk, gid)
    end
  end
end

-- Takes the next job of group `gid`, or nil when the group cannot run now (it is
-- then parked in maxed or limited, or dropped from the ring when it has no jobs).
--- @lazy
local function takeFromGroup(qk, gid, limits, now)
  local activeSet = groupKey(qk, gid, "active")
  local list = groupKey(qk, gid, "wait")
  if foreignType(activeSet, "set") or foreignType(list, "list") then
    giveTurn(qk, gid) -- another client's value there: the group waits, at the ring's back
    return nil
  end
  if limits.concurrency and rcall("SCARD", activeSet) >= limits.concurrency then
    rcall("SADD", qk .. ":groups:maxed", gid)
    return nil
  end
  local limiterKey = groupKey(qk, gid, "limiter")
  local used = 0
  if limits.max then
    used = limiterUsed(limiterKey)
    if used >= limits.max then
      local ttl = rcall("PTTL", limiterKey)
      if ttl > 0 then
        rcall("ZADD", qk .. ":groups:limited", now + ttl, gid)
        return nil
      end
      rcall("DEL", limiterKey)
      used = 0
    end
  end
  local jobId = rcall("RPOP", list)
  -- skip ids whose job was removed while it waited
  while jobId and rcall("EXISTS", qk .. ":" .. jobId) == 0 do
    jobId = rcall("RPOP", list)
  end
  if not jobId then
    return nil
  end
  rcall("SADD", activeSet, jobId)
  if limits.max then
    used = rcall("INCR", limiterKey)
    if used == 1 then
      rcall("PEXPIRE", limiterKey, math.max(1, math.floor(limits.duration or 1000)))
    end
  end
  if rcall("LLEN", list) > 0 then
    if limits.concurrency and rcall("SCARD", activeSet) >= limits.concurrency then
      rcall("SADD", qk .. ":groups:maxed", gid)
    elseif limits.max and used >= limits.max then
      rcall("ZADD", qk .. ":groups:limited", now + math.max(rcall("PTTL", limiterKey), 1), gid)
    else
      giveTurn(qk, gid)
    end
  end
  return jobId
end

-- A group can stay "maxed" after its jobs left active through a path that does
-- not know groups (a BullMQ worker, a stalled job moved by BullMQ). Jobs that
-- are neither locked nor active no longer count; such groups get a turn back.
--- @lazy
local function healMaxedGroups(qk, limits)
  local healed = false
  for _, gid in ipairs(rcall("SRANDMEMBER", qk .. ":groups:maxed", 50)) do
    local activeSet = groupKey(qk, gid, "active")
    for _, jobId in ipairs(rcall("SMEMBERS", activeSet)) do
      if rcall("EXISTS", qk .. ":" .. jobId .. ":lock") == 0
          and not rcall("LPOS", qk .. ":active", jobId) then
        rcall("SREM", activeSet, jobId)
      end
    end
    if not limits.concurrency or rcall("SCARD", activeSet) < limits.concurrency then
      rcall("SREM", qk .. ":groups:maxed", gid)
      if rcall("LLEN", groupKey(qk, gid, "wait")) > 0 then
        giveTurn(qk, gid)
        healed = true
      end
    end
  end
  return healed
end
