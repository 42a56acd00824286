-- Writes a JSON object of job fields (failedReason, stacktrace, ...) given
-- by the client. Needs base.lua.
local function setFieldsFromJson(jobKey, json)
  if json == "" then
    return
  end
  local fields = {}
  for field, value in pairs(cjson.decode(json)) do
    fields[#fields + 1] = field
    fields[#fields + 1] = value
  end
  if #fields > 0 then
    rcall("HSET", jobKey, unpack(fields))
  end
end
