--[[
  Storing a job made inside a script (a scheduler iteration, a deduplicated
  job re-added when its active twin finishes) and putting it where it
  belongs: delayed when it has a delay, else ready (wait or prioritized).
  Needs base.lua.
]]

-- extra: flat list of additional hash fields (parentKey, parent, rjk, deid).
--- @lazy
local function storeAndEnqueue(qk, jobId, name, data, optsJson, timestamp, delay, priority, lifo, extra)
  local jobKey = qk .. ":" .. jobId
  rcall("HSET", jobKey, "name", name, "data", data, "opts", optsJson, "timestamp", timestamp,
    "delay", delay, "priority", priority, unpack(extra))
  emit(qk, "added", "jobId", jobId, "name", name)
  if delay > 0 then
    addDelayed(qk, jobId, timestamp + delay)
  else
    local gid = false
    for i = 1, #extra - 1, 2 do
      if extra[i] == "gid" then
        gid = extra[i + 1]
      end
    end
    enqueueReady(qk, jobId, priority, lifo and priority == 0, gid)
    if not isPausedOrMaxed(qk) then
      addWakeMarker(qk)
    end
    emit(qk, "waiting", "jobId", jobId)
  end
end
