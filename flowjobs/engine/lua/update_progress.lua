--[[
  Stores a job's progress and announces it.
  KEYS[1]  job key   ARGV[1] qk  ARGV[2] jobId  ARGV[3] progress JSON
  Returns  0, or -1 missing job
  Events   progress
]]
--- @include "includes/base"

if rcall("EXISTS", KEYS[1]) == 0 then
  return -1
end
-- the events cap first: another client's value at meta refuses before the write
maxEvents(ARGV[1])
rcall("HSET", KEYS[1], "progress", ARGV[3])
emit(ARGV[1], "progress", "jobId", ARGV[2], "data", ARGV[3])
return 0
