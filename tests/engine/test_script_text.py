"""The scripts' text: included helpers a script never calls are left out of it (Redis runs
a script's whole text, every helper definition included, on every call)."""

from __future__ import annotations

import pytest

from flowjobs.engine import scripts

SCRIPT = """local rcall = redis.call

-- wanted: also mentions unwanted in this comment
local function helper(k)
  return rcall("GET", k)
end

local function wanted(k)
  if k then
    return helper(k)
  end
end

--[[ dropped: only `unwanted` calls it ]]
local function dropped()
  return 1
end

local function unwanted()
  return dropped()
end

return wanted(KEYS[1])
"""


def test_helpers_nothing_calls_are_left_out_and_the_rest_is_untouched():
    text = scripts.without_unused_functions(SCRIPT)
    assert "local function wanted(" in text and "local function helper(" in text
    assert "local function unwanted(" not in text and "local function dropped(" not in text
    kept = SCRIPT.replace("local function dropped()\n  return 1\nend\n", "").replace(
        "local function unwanted()\n  return dropped()\nend\n", ""
    )
    assert text == kept


def test_adding_a_job_carries_only_the_helpers_it_calls(redis_client):
    """add_jobs pulled in 39 helpers and called 21: each call made all 39 anew."""
    full = scripts._expand(scripts.LUA_DIR / "add_jobs.lua", set())
    text, sha = scripts.source("add_jobs")
    kept = [match.group(1) for match in scripts._FUNCTION.finditer(text)]
    assert 0 < len(kept) < full.count("local function ")
    for name in kept:  # each is called somewhere besides its own definition
        assert text.count(f"{name}(") >= 2, name
    assert redis_client.script_load(text) == sha


def test_a_helper_not_closed_by_a_line_of_its_own_is_refused():
    """Such a helper's text would run on to the next one's `end`: leaving it out could
    take a helper that is called with it."""

    text = "local function a()\n  return 1 end\nlocal function b()\n  return 2\nend\nreturn b()\n"
    with pytest.raises(ValueError, match="must end with a line that is just `end`"):
        scripts.without_unused_functions(text)
