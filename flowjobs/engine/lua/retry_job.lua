--[[
  Puts an active job straight back in line for another attempt (no backoff).

  KEYS[1]  meta key (routing only)
  ARGV[1]  qk  ARGV[2] jobId  ARGV[3] now  ARGV[4] token
  ARGV[5]  "1" to put it at the front (lifo)  ARGV[6] extra fields JSON
  Returns  0 or -1 / -2 / -3 / -6
  Events   waiting (prev active)
]]
--- @include "includes/base"
--- @include "includes/fields"

local qk, jobId, now, token = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4]
local jobKey = qk .. ":" .. jobId
lazy().refuseForeignKey(qk .. ":wait", "list", "job " .. jobId)
lazy().refuseForeignKey(qk .. ":prioritized", "zset", "job " .. jobId)
promoteDueJobs(qk, now)
local taken = takeFromActive(qk, jobKey, jobId, token)
if taken ~= 0 then
  return taken
end
setFieldsFromJson(jobKey, ARGV[6])
enqueueReady(qk, jobId, tonumber(rcall("HGET", jobKey, "priority")) or 0, ARGV[5] == "1")
if not isPausedOrMaxed(qk) then
  addWakeMarker(qk)
end
incrementCounter(jobKey, "atm")
emit(qk, "waiting", "jobId", jobId, "prev", "active")
return 0
