--[[
  Removes a parent's pending children (and their sub-trees) that no worker
  holds and that have not failed: what a parent released early by a
  continue_parent_on_failure child does before completing.

  KEYS[1]  parent job key
  ARGV[1]  now
  Returns  the number of children removed
  Events   removed (per job, on its own queue)
]]
--- @include "includes/base"
--- @include "includes/parent"
--- @include "includes/remove"

local now = tonumber(ARGV[1])
local removed = 0
for _, childKey in ipairs(rcall("SMEMBERS", KEYS[1] .. ":dependencies")) do
  local childQk, childId = splitJobKey(childKey)
  if not isLockedTree(childKey, true) and not rcall("ZSCORE", childQk .. ":failed", childId) then
    removeTree(childQk, childId, true, now)
    removed = removed + 1
  end
end
return removed
