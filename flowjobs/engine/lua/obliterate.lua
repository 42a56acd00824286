--[[
  Deletes a paused queue and all its jobs, at most `count` jobs per call.

  KEYS[1]  meta key
  ARGV[1]  qk  ARGV[2] count  ARGV[3] force "1"/"0"
  Returns  1 call again, 0 done, -1 queue not paused, -2 active jobs (no force)
]]
--- @include "includes/base"

local qk, budget, force = ARGV[1], tonumber(ARGV[2]), ARGV[3] == "1"
if rcall("HEXISTS", KEYS[1], "paused") == 0 then
  return -1
end
-- Another client's value at one of the queue's keys holds none of its jobs: it is
-- deleted with the rest of what is under the queue's name.
local function ownKind(key, kind)
  if foreignType(key, kind) then
    rcall("DEL", key)
    return false
  end
  return true
end
if not force and ownKind(qk .. ":active", "list") and rcall("LLEN", qk .. ":active") > 0 then
  return -2
end

local function removeFrom(suffix, isList)
  if budget <= 0 then
    return -- (a range of 0 .. -1 would be the whole state)
  end
  local key = qk .. ":" .. suffix
  if not ownKind(key, isList and "list" or "zset") then
    return
  end
  local ids
  if isList then
    ids = rcall("LRANGE", key, 0, budget - 1)
  else
    ids = rcall("ZRANGE", key, 0, budget - 1)
  end
  for _, jobId in ipairs(ids) do
    local jobKey = qk .. ":" .. jobId
    rcall("DEL", jobKey, jobKey .. ":logs", jobKey .. ":dependencies", jobKey .. ":processed",
      jobKey .. ":failed", jobKey .. ":unsuccessful", jobKey .. ":lock")
  end
  if #ids > 0 then
    if isList then
      rcall("LTRIM", key, #ids, -1)
    else
      rcall("ZREMRANGEBYRANK", key, 0, #ids - 1) -- the ids just read: no unpack limit
    end
  end
  budget = budget - #ids
end

removeFrom("active", true)
removeFrom("wait", true)
removeFrom("paused", true)
removeFrom("delayed", false)
removeFrom("prioritized", false)
removeFrom("waiting-children", false)
removeFrom("completed", false)
removeFrom("failed", false)
if budget > 0 and ownKind(qk .. ":repeat", "zset") then
  local schedulers = rcall("ZRANGE", qk .. ":repeat", 0, budget - 1)
  for _, schedulerId in ipairs(schedulers) do
    rcall("DEL", qk .. ":repeat:" .. schedulerId)
    rcall("ZREM", qk .. ":repeat", schedulerId)
  end
  budget = budget - #schedulers
end
if budget <= 0 then
  return 1
end
rcall("DEL", qk .. ":events", qk .. ":delay", qk .. ":stalled-check", qk .. ":stalled", qk .. ":id",
  qk .. ":pc", qk .. ":marker", qk .. ":limiter", qk .. ":repeat", qk .. ":metrics:completed",
  qk .. ":metrics:completed:data", qk .. ":metrics:failed", qk .. ":metrics:failed:data", KEYS[1])
return 0
