--[[
  Appends a line to a job's log, keeping the last keepLogs lines if set.
  KEYS[1]  job key   ARGV[1] line  ARGV[2] keepLogs ("" = all)
  Returns  the number of lines kept, or -1 missing job
]]
if redis.call("EXISTS", KEYS[1]) == 0 then
  return -1
end
local logsKey = KEYS[1] .. ":logs"
local length = redis.call("RPUSH", logsKey, ARGV[1])
local keep = tonumber(ARGV[2])
if keep then
  redis.call("LTRIM", logsKey, -keep, -1)
  return math.min(keep, length)
end
return length
