--[[
  Moves an active job back to wait without counting an attempt (rate limit
  hit inside the processor, or an explicit move_to_wait). A prioritized job
  goes to the front of its priority band.

  KEYS[1]  meta key (routing only)
  ARGV[1]  qk  ARGV[2] jobId  ARGV[3] token
  ARGV[4]  "1": the job never started (a worker's fetch whose answer was lost took it);
           its attempts started (ats) go back down by one. Optional.
  Returns  the limiter's remaining ttl ms (>= 0), or -1 / -2 / -6
  Events   waiting (prev active)
]]
--- @include "includes/base"

local qk, jobId, token = ARGV[1], ARGV[2], ARGV[3]
local jobKey = qk .. ":" .. jobId
if rcall("EXISTS", jobKey) == 0 then
  return -1
end
lazy().refuseForeignKey(qk .. ":wait", "list", "job " .. jobId)
lazy().refuseForeignKey(qk .. ":prioritized", "zset", "job " .. jobId)
local lockResult = releaseLock(qk, jobKey, jobId, token)
if lockResult ~= 0 then
  return lockResult
end
if rcall("LREM", qk .. ":active", 1, jobId) > 0 then
  if ARGV[4] == "1" and (tonumber(rcall("HGET", jobKey, "ats")) or 0) > 0 then
    rcall("HINCRBY", jobKey, "ats", -1)
  end
  local priority = tonumber(rcall("HGET", jobKey, "priority")) or 0
  if priority > 0 then
    rcall("ZADD", qk .. ":prioritized", priority * 4294967296, jobId)
  else
    rcall("RPUSH", qk .. ":wait", jobId)
    if not isPausedOrMaxed(qk) then
      addWakeMarker(qk)
    end
  end
  emit(qk, "waiting", "jobId", jobId, "prev", "active")
end
local ttl = rcall("PTTL", qk .. ":limiter")
if ttl > 0 then
  return ttl
end
return 0
