--[[
  Releases a deduplication id, but only if it is still owned by the given job
  (a newer owner keeps it).

  KEYS[1]  the deduplication key (<qk>:de:<id>)
  ARGV[1]  jobId
  Returns  1 released, 0 not owned by that job
]]
local rcall = redis.call
if rcall("GET", KEYS[1]) == ARGV[1] then
  return rcall("DEL", KEYS[1])
end
return 0
