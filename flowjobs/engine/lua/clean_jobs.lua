--[[
  Removes jobs of one state older than a cutoff (hard removal, no per-job
  event). Scheduler iterations waiting to run and locked active jobs stay.

  KEYS[1]  the state's set or list key
  ARGV[1]  qk  ARGV[2] cutoff ms  ARGV[3] limit (0 = none)  ARGV[4] state
  ARGV[5]  now
  Returns  the removed ids
  Events   cleaned (count)
]]
--- @include "includes/base"
--- @include "includes/parent"
--- @include "includes/remove"

local qk, cutoff, limit, state, now = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4], tonumber(ARGV[5])
local removed = {}
local isList = state == "wait" or state == "active" or state == "paused"
-- another client's value at a key this clean writes: refused before a job is removed
refuseForeignKey(KEYS[1], isList and "list" or "zset", "the " .. state .. " jobs")
refuseForeignKey(qk .. ":meta", "hash", "the " .. state .. " jobs")

local function jobTime(jobKey)
  local fields = rcall("HMGET", jobKey, "finishedOn", "processedOn", "timestamp")
  if state == "delayed" then
    return tonumber(fields[2] or fields[3])
  elseif state == "prioritized" then
    return tonumber(fields[3])
  end
  return tonumber(fields[1] or fields[2] or fields[3])
end

if state == "completed" or state == "failed" then
  local ids
  if limit > 0 then
    ids = rcall("ZRANGEBYSCORE", KEYS[1], "-inf", cutoff, "LIMIT", 0, limit)
  else
    ids = rcall("ZRANGEBYSCORE", KEYS[1], "-inf", cutoff)
  end
  for _, jobId in ipairs(ids) do
    removeQuietly(qk, jobId, now) -- first: it may refuse (a parent's key held by another client)
    rcall("ZREM", KEYS[1], jobId)
    removed[#removed + 1] = jobId
  end
else
  local ids
  if isList then
    ids = rcall("LRANGE", KEYS[1], 0, -1)
  else
    ids = rcall("ZRANGE", KEYS[1], 0, -1)
  end
  for i = #ids, 1, -1 do
    if limit > 0 and #removed >= limit then
      break
    end
    local jobId = ids[i]
    local jobKey = qk .. ":" .. jobId
    local eligible = not isCurrentSchedulerIteration(qk, jobId)
      and not (state == "active" and rcall("EXISTS", jobKey .. ":lock") == 1)
    local time = jobTime(jobKey)
    if eligible and (time == nil or time <= cutoff) then
      removeQuietly(qk, jobId, now) -- first, as above
      if isList then
        rcall("LREM", KEYS[1], 0, jobId)
      else
        rcall("ZREM", KEYS[1], jobId)
      end
      removed[#removed + 1] = jobId
    end
  end
end
emit(qk, "cleaned", "count", #removed)
return removed
