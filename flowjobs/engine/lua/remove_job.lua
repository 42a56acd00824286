--[[
  Removes a job (and by default its whole sub-tree of children), unless it
  or a job below it is locked by a worker.

  KEYS[1]  job key
  ARGV[1]  qk  ARGV[2] jobId  ARGV[3] remove children "1"/"0"  ARGV[4] now
  Returns  1 removed, 0 locked (nothing removed), -8 current scheduler iteration
  Events   removed (per job, on its own queue), waiting for a released parent
]]
--- @include "includes/base"
--- @include "includes/parent"
--- @include "includes/remove"

local qk, jobId, withChildren, now = ARGV[1], ARGV[2], ARGV[3] == "1", tonumber(ARGV[4])
if isCurrentSchedulerIteration(qk, jobId) then
  return -8
end
if isLockedTree(KEYS[1], withChildren) then
  return 0
end
-- the events cap first: another client's value at meta refuses before a removal
maxEvents(qk)
removeTree(qk, jobId, withChildren, now)
return 1
