--[[
  Takes up to #tokens ready jobs (wait first, then prioritized), locks each
  with its own token and marks it active.

  KEYS[1]  meta key (routing only)
  ARGV[1]  qk   ARGV[2] now ms   ARGV[3] lock duration ms
  ARGV[4]  limiter max ("" = none)   ARGV[5] limiter duration ms ("" = none)
  ARGV[6]  worker name ("" = none)   ARGV[7..] one lock token per job wanted (the
           last may be marked "?": a job taken ahead, see fetchJobs)
  Returns  {{{jobId, flatHash}...}, rateLimitDelayMs, nextDelayedDueMs}
  Events   active (per job); waiting for promoted delayed jobs
]]
--- @include "includes/base"
--- @include "includes/fetch"

local tokens = {}
for i = 7, #ARGV do
  tokens[#tokens + 1] = ARGV[i]
end
local name = ARGV[6]
if name == "" then
  name = nil
end
return fetchJobs(ARGV[1], ARGV[2], tokens, ARGV[3], tonumber(ARGV[4]),
  tonumber(ARGV[5]), name)
