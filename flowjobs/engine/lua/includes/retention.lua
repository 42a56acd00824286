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
  rcallInChunks("ZREM", setKey, ids) -- (`limit` may be over what unpack takes)
end

-- keepCount -1 keeps everything; keepAge (seconds) trims at most keepLimit
-- old jobs per call, like BullMQ.
local function applyRetention(qk, setKey, keepCount, keepAge, keepLimit, now)
  if keepAge then
    local ids = rcall("ZRANGEBYSCORE", setKey, "-inf", wholeText(now - keepAge * 1000),
      "LIMIT", "0", keepLimit and wholeText(keepLimit) or "1000")
    removeFinishedJobs(qk, setKey, ids, now)
  end
  if keepCount > 0 then
    local extra = rcall("ZREVRANGE", setKey, wholeText(keepCount), wholeText(keepCount + 999))
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
    rcall("HSET", key, "prevTS", wholeText(now), "prevCount", "0")
    return
  end
  local minutes = math.min(math.floor(now / 60000) - math.floor(previousTime / 60000), maxPoints)
  if minutes > 0 then
    local dataKey = key .. ":data"
    rcall("LPUSH", dataKey, wholeText(count - (tonumber(previous[3]) or 0)))
    for _ = 2, minutes do
      rcall("LPUSH", dataKey, "0")
    end
    rcall("LTRIM", dataKey, "0", wholeText(maxPoints - 1))
    rcall("HSET", key, "prevCount", wholeText(count), "prevTS", wholeText(now))
  end
end
