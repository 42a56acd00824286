--[[
  Retention of finished jobs (removeOnComplete / removeOnFail) and the
  per-minute metrics. Needs base.lua and parent.lua.
]]

local function removeFinishedJobs(qk, setKey, ids, now)
  for _, jobId in ipairs(ids) do
    local jobKey = qk .. ":" .. jobId
    unlinkFromParent(jobKey, now)
    removeJobKeys(jobKey)
  end
  for i = 1, #ids, 5000 do -- (Lua's unpack takes about 8,000 at most; `limit` may be more)
    rcall("ZREM", setKey, unpack(ids, i, math.min(i + 4999, #ids)))
  end
end

-- keepCount -1 keeps everything; keepAge (seconds) trims at most keepLimit
-- old jobs per call, like BullMQ.
local function applyRetention(qk, setKey, keepCount, keepAge, keepLimit, now)
  if keepAge then
    local ids = rcall("ZRANGEBYSCORE", setKey, "-inf", string.format("%d", now - keepAge * 1000),
      "LIMIT", "0", keepLimit and string.format("%d", keepLimit) or "1000")
    removeFinishedJobs(qk, setKey, ids, now)
  end
  if keepCount > 0 then
    local extra = rcall("ZREVRANGE", setKey, string.format("%d", keepCount),
      string.format("%d", keepCount + 999))
    removeFinishedJobs(qk, setKey, extra, now)
  end
end

-- A count or time another client left that is not a number restarts the count at 1
-- (incrementCounter) or the minute (as if unset): a script error there would leave the
-- finish half-written.
local function updateMetrics(qk, target, maxPoints, now)
  local key = qk .. ":metrics:" .. target
  local previous = rcall("HMGET", key, "count", "prevTS", "prevCount")
  local count = tonumber(previous[1]) or 0
  incrementCounter(key, "count")
  local previousTime = tonumber(previous[2])
  if not previousTime then
    rcall("HSET", key, "prevTS", string.format("%d", now), "prevCount", "0")
    return
  end
  local minutes = math.min(math.floor(now / 60000) - math.floor(previousTime / 60000), maxPoints)
  if minutes > 0 then
    local dataKey = key .. ":data"
    rcall("LPUSH", dataKey, string.format("%d", count - (tonumber(previous[3]) or 0)))
    for _ = 2, minutes do
      rcall("LPUSH", dataKey, "0")
    end
    rcall("LTRIM", dataKey, "0", string.format("%d", maxPoints - 1))
    rcall("HSET", key, "prevCount", string.format("%d", count), "prevTS", string.format("%d", now))
  end
end
