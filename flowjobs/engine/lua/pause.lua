--[[
  Pauses or resumes a queue (BullMQ 6: jobs stay in wait; only meta
  `paused` marks the pause). Resume also drains a legacy 5.x `paused` list.

  KEYS[1]  meta key
  ARGV[1]  qk  ARGV[2] "paused" | "resumed"
  Returns  0
  Events   paused | resumed
]]
--- @include "includes/base"

local qk, action = ARGV[1], ARGV[2]
-- another client's value at a key this writes or reads after a write: refused first
refuseForeignKey(KEYS[1], "hash", "the queue")
if action ~= "paused" then
  refuseForeignKey(qk .. ":wait", "list", "the queue")
  refuseForeignKey(qk .. ":paused", "list", "the queue")
  refuseForeignKey(qk .. ":prioritized", "zset", "the queue")
  refuseForeignKey(qk .. ":delayed", "zset", "the queue")
end
if action == "paused" then
  rcall("HSET", KEYS[1], "paused", 1)
  rcall("DEL", qk .. ":marker")
else
  rcall("HDEL", KEYS[1], "paused")
  local legacy = qk .. ":paused"
  if rcall("EXISTS", legacy) == 1 then
    if rcall("EXISTS", qk .. ":wait") == 0 then
      rcall("RENAME", legacy, qk .. ":wait")
    else
      rcallInChunks("RPUSH", qk .. ":wait", rcall("LRANGE", legacy, "0", "-1"))
      rcall("DEL", legacy)
    end
  end
  if rcall("LLEN", qk .. ":wait") > 0 or rcall("ZCARD", qk .. ":prioritized") > 0 then
    if not isPausedOrMaxed(qk) then
      addWakeMarker(qk)
    end
  else
    addDelayMarker(qk)
  end
end
emit(qk, action)
return 0
