--[[
  Removes a job scheduler and its pending iteration if that is still delayed
  (an iteration already in wait runs, and produces nothing after it).

  KEYS[1]  meta key (routing only)
  ARGV[1]  qk  ARGV[2] scheduler id
  Returns  0 removed, 1 no such scheduler
  Events   removed (prev delayed) for the pending iteration
]]
--- @include "includes/base"
--- @include "includes/scheduler"

local qk, schedulerId = ARGV[1], ARGV[2]
refuseForeignSchedulerKeys(qk, schedulerId, nil, "scheduler " .. schedulerId)
local repeatKey = qk .. ":repeat"
local millis = rcall("ZSCORE", repeatKey, schedulerId)
if millis then
  local jobId = "repeat:" .. schedulerId .. ":" .. millis
  if rcall("ZREM", qk .. ":delayed", jobId) == 1 then
    removeJobKeys(qk .. ":" .. jobId)
    emit(qk, "removed", "jobId", jobId, "prev", "delayed")
  end
end
if rcall("ZREM", repeatKey, schedulerId) == 1 then
  rcall("DEL", repeatKey .. ":" .. schedulerId)
  return 0
end
return 1
