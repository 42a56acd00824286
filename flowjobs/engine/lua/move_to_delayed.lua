--[[
  Moves an active job to delayed: a retry with backoff, or a processor that
  asked to run again later (DelayedError, skipAttempt = 1).

  KEYS[1]  meta key (routing only)
  ARGV[1]  qk  ARGV[2] jobId  ARGV[3] now  ARGV[4] token  ARGV[5] due ms
  ARGV[6]  skip attempt "1"/"0"  ARGV[7] extra fields JSON ("" = none)
  ARGV[8]  lock duration  ARGV[9] limiter max  ARGV[10] limiter duration
  ARGV[11] worker name  ARGV[12..] lock tokens for fetching next jobs (as Node's
           fetchNext: a manual retry with backoff hands back the next job)
  Returns  0, the fetch tuple, or -1 / -2 / -3 / -6
  Events   delayed
]]
--- @include "includes/base"
--- @include "includes/fields"
--- @include "includes/fetch"

local qk, jobId, now, token = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4]
local due = tonumber(ARGV[5])
local jobKey = qk .. ":" .. jobId
lazy().refuseForeignKey(qk .. ":delayed", "zset", "job " .. jobId)
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
local fetched = fetchNextFromArgv(qk, ARGV[3], 8)
if fetched then
  return fetched
end
return 0
