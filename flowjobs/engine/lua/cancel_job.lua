--[[
  Asks the worker running a job to stop it. The request names the lock token
  of the current run, so it never reaches a later run of the same job: it is
  published on <qk>:cancel for the workers listening there, and kept in the
  job hash (field `cancel`) where lock renewal finds it if the message was missed.

  KEYS[1]  job key
  ARGV[1]  qk  ARGV[2] jobId  ARGV[3] reason
  Returns  1 requested, 0 the job is not running (no lock), -1 no such job
]]
local rcall = redis.call
local qk, jobId, reason = ARGV[1], ARGV[2], ARGV[3]
if rcall("EXISTS", KEYS[1]) == 0 then
  return -1
end
local token = rcall("GET", KEYS[1] .. ":lock")
if not token then
  return 0
end
local request = cjson.encode({token = token, reason = reason})
rcall("HSET", KEYS[1], "cancel", request)
-- pcall: a user without rights on the channel still cancels, through the hash
redis.pcall("PUBLISH", qk .. ":cancel", cjson.encode({jobId = jobId, token = token, reason = reason}))
return 1
