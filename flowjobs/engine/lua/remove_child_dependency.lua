--[[
  Detaches a child from its parent; the parent is released if that was its
  last pending child.

  KEYS[1]  child job key
  ARGV[1]  parent key  ARGV[2] now
  Returns  0 detached, 1 no such relationship, -1 missing child, -5 missing parent
  Events   waiting (prev waiting-children) on the parent's queue
]]
--- @include "includes/base"
--- @include "includes/parent"

local childKey, parentKey, now = KEYS[1], ARGV[1], tonumber(ARGV[2])
if rcall("EXISTS", childKey) == 0 then
  return -1
end
if rcall("EXISTS", parentKey) == 0 then
  return -5
end
local parent = parentOf(childKey)
if not parent or parent.key ~= parentKey then
  parent = {key = parentKey}
  parent.qk, parent.id = splitJobKey(parentKey)
end
refuseForeignParentKeys(parent, nil, "job " .. childKey)
if rcall("SREM", parentKey .. ":dependencies", childKey) == 0 then
  return 1
end
releaseParentIfReady(parent, now)
rcall("HDEL", childKey, "parentKey", "parent")
return 0
