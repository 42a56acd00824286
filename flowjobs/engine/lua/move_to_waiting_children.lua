--[[
  A running parent parks itself until its pending children finish.

  KEYS[1]  job key
  ARGV[1]  qk  ARGV[2] jobId  ARGV[3] token  ARGV[4] child key ("" = any)
  ARGV[5]  now
  Returns  0 moved, 1 nothing pending (not moved), -1 missing job,
           -2/-6 lock, -3 not active, -9 a child failed (fpof)
  Events   waiting-children (prev active)
]]
--- @include "includes/base"

local qk, jobId, token, childKey, now = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local jobKey = KEYS[1]
if rcall("EXISTS", jobKey) == 0 then
  return -1
end
-- checked before the first write: a refused ZADD there left the job in no state
refuseForeignKey(jobKey .. ":dependencies", "set", "job " .. jobId)
refuseForeignKey(jobKey .. ":unsuccessful", "zset", "job " .. jobId)
refuseForeignKey(qk .. ":waiting-children", "zset", "job " .. jobId)
if rcall("ZCARD", jobKey .. ":unsuccessful") ~= 0 then
  return -9
end
if childKey ~= "" then
  if rcall("SISMEMBER", jobKey .. ":dependencies", childKey) == 0 then
    return 1
  end
elseif rcall("SCARD", jobKey .. ":dependencies") == 0 then
  return 1
end
local taken = takeFromActive(qk, jobKey, jobId, token)
if taken ~= 0 then
  return taken
end
rcall("ZADD", qk .. ":waiting-children", now, jobId)
emit(qk, "waiting-children", "jobId", jobId, "prev", "active")
return 0
