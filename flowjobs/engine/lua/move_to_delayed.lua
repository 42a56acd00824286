--[[
  Moves an active job to delayed: a retry with backoff, or a processor that
  asked to run again later (DelayedError, skipAttempt = 1).

  KEYS[1]  meta key (routing only)
  ARGV[1]  qk  ARGV[2] jobId  ARGV[3] now  ARGV[4] token  ARGV[5] due ms
  ARGV[6]  skip attempt "1"/"0"  ARGV[7] extra fields JSON ("" = none)
  Returns  0 or -1 / -2 / -3 / -6
  Events   delayed
]]
--- @include "includes/base"
--- @include "includes/fields"

local qk, jobId, now, token = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4]
local due = tonumber(ARGV[5])
local jobKey = qk .. ":" .. jobId
local taken = takeFromActive(qk, jobKey, jobId, token)
if taken ~= 0 then
  return taken
end
setFieldsFromJson(jobKey, ARGV[7])
if ARGV[6] ~= "1" then
  incrementCounter(jobKey, "atm")
end
rcall("HSET", jobKey, "delay", math.max(0, due - now))
addDelayed(qk, jobId, due)
return 0
