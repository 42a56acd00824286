--[[
  Removes every job waiting to run (wait, prioritized and the groups, and delayed when
  asked), except the pending iteration of each job scheduler. No events.

  KEYS[1]  meta key (routing only)
  ARGV[1]  qk  ARGV[2] include delayed "1"/"0"  ARGV[3] now
  Returns  the number of jobs removed
]]
--- @include "includes/base"
--- @include "includes/parent"
--- @include "includes/remove"

local qk, now = ARGV[1], tonumber(ARGV[3])
local what = "every job waiting to run"
-- another client's value at a key this drain writes: refused before anything is removed
refuseForeignKey(qk .. ":wait", "list", what)
refuseForeignKey(qk .. ":paused", "list", what)
refuseForeignKey(qk .. ":prioritized", "zset", what)
if ARGV[2] == "1" then
  refuseForeignKey(qk .. ":delayed", "zset", what)
end
refuseForeignGroupKeys(qk, nil, what)
-- grouped jobs wait in their groups' lists (see includes/groups.lua)
local groupIds = rcall("ZRANGE", qk .. ":groups:ready", 0, -1)
for _, gid in ipairs(rcall("SMEMBERS", qk .. ":groups:maxed")) do
  groupIds[#groupIds + 1] = gid
end
for _, gid in ipairs(rcall("ZRANGE", qk .. ":groups:limited", 0, -1)) do
  groupIds[#groupIds + 1] = gid
end
for _, gid in ipairs(groupIds) do
  if gid ~= plainTurn then
    refuseForeignKey(groupKey(qk, gid, "wait"), "list", what)
  end
end
local count = 0
local function drainKey(key, isList)
  local ids
  if isList then
    ids = rcall("LRANGE", key, 0, -1)
  else
    ids = rcall("ZRANGE", key, 0, -1)
  end
  for _, jobId in ipairs(ids) do
    if not isCurrentSchedulerIteration(qk, jobId) then
      -- first: it may refuse (a parent's key held by another client), then nothing is written
      removeQuietly(qk, jobId, now)
      if isList then
        rcall("LREM", key, 0, jobId)
      else
        rcall("ZREM", key, jobId)
      end
      count = count + 1
    end
  end
end
drainKey(qk .. ":wait", true)
drainKey(qk .. ":paused", true)
drainKey(qk .. ":prioritized", false)
for _, gid in ipairs(groupIds) do
  if gid ~= plainTurn then
    drainKey(groupKey(qk, gid, "wait"), true)
    if rcall("LLEN", groupKey(qk, gid, "wait")) == 0 then
      rcall("ZREM", qk .. ":groups:ready", gid)
      rcall("SREM", qk .. ":groups:maxed", gid)
      rcall("ZREM", qk .. ":groups:limited", gid)
    end
  end
end
if rcall("ZCARD", qk .. ":groups:ready") == 1 then
  rcall("ZREM", qk .. ":groups:ready", plainTurn)
end
if ARGV[2] == "1" then
  drainKey(qk .. ":delayed", false)
end
-- the priority counter (pc) stays, as in Node: a scheduler iteration kept above holds
-- a score from it, and a reset would put new jobs of its priority ahead of it
return count
