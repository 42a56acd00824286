"""The scripts' text: included helpers a script never calls are left out of it (Redis runs
a script's whole text, every helper definition included, on every call)."""

from __future__ import annotations

import contextlib
import functools
import hashlib
from collections.abc import Callable

import pytest
import redis

from flowjobs.engine import scripts
from tests.helpers import wait_for

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


LAZY_SCRIPT = """local rcall = redis.call

local function hot(k)
  return rcall("GET", k)
end

--- @lazy
local function cold(k)
  return "cold:" .. hot(k)
end

--- @lazy
local function colder(k)
  return cold(k) .. "!"
end

if ARGV[1] == "cold" then
  return colder(KEYS[1])
end
return hot(KEYS[1])
"""


def test_lazy_helpers_are_made_by_their_first_call_and_called_the_same(redis_client, prefix):
    text = scripts.with_lazy_helpers(LAZY_SCRIPT)
    assert "return lazy().colder(KEYS[1])" in text and "return hot(KEYS[1])" in text
    # inside the lazy block the helpers call each other directly
    assert 'return cold(k) .. "!"' in text and "@lazy" not in text
    key = f"{prefix}:k"
    redis_client.set(key, "v")
    assert redis_client.eval(text, 1, key, "cold") == "cold:v!"
    assert redis_client.eval(text, 1, key, "hot") == "v"


def test_a_lazy_helper_used_other_than_by_a_call_is_refused():
    text = LAZY_SCRIPT.replace('return hot(KEYS[1])\n"', "").replace(
        "return hot(KEYS[1])\n", "return type(cold)\n"
    )
    with pytest.raises(ValueError, match="lazy helper cold is used other than by a call"):
        scripts.with_lazy_helpers(text)


def test_every_script_compiles_on_redis(redis_client):
    for name in scripts.script_names():
        text, sha = scripts.source(name)
        assert redis_client.script_load(text) == sha, name


@contextlib.contextmanager
def scripts_changed(monkeypatch: pytest.MonkeyPatch, change: Callable[[str, str], str]):
    """Every script's text as `change(name, text)` makes it, for the block."""
    plain_source = scripts.source

    @functools.cache
    def changed_source(name: str) -> tuple[str, str]:
        text = change(name, plain_source(name)[0])
        return text, hashlib.sha1(text.encode()).hexdigest()

    monkeypatch.setattr(scripts, "source", changed_source)
    scripts._packed_head.cache_clear()  # it keeps each script's SHA
    try:
        yield
    finally:
        monkeypatch.undo()
        scripts._packed_head.cache_clear()


def add_and_run_plain_jobs(queue, make_worker) -> None:  # noqa: ANN001
    """Plain, prioritized (with an id) and bulk-added jobs, run by a worker that takes
    the next job with each finish, and whose finishes apply retention by count and age
    and count metrics."""
    queue.add("plain", {"n": 1})
    queue.add("prioritized", {"n": 2}, priority=5, job_id="custom-id")
    keep = {"age": 3600, "count": 1}
    queue.add_bulk([{"name": "bulk", "opts": {"remove_on_complete": keep}} for _ in range(3)])
    done: list[str] = []
    worker = make_worker(
        "q",
        lambda job: done.append(job.id),
        concurrency=2,
        metrics_max_data_points=60,
        autorun=False,
    )
    worker.start()
    wait_for(lambda: len(done) == 5)
    worker.close()


def test_a_plain_job_is_added_taken_and_finished_without_making_the_lazy_helpers(
    monkeypatch, queue, make_worker, redis_client, prefix
):
    """The lazy helpers (flows, groups, deduplication, delays, removal) cost a plain job
    nothing: counted here by a script text that counts each making of them. (Not in the
    stalled check, which runs once an interval, not once a job: it makes them to check
    its wait list's type.)"""
    counter = f"{prefix}:lazy-made"

    def counting(name: str, text: str) -> str:
        if name == "move_stalled_jobs_to_wait":
            return text
        return text.replace(
            "  if lazyHelpers == nil then\n",
            f'  if lazyHelpers == nil then\n  redis.call("HINCRBY", "{counter}", "{name}", 1)\n',
        )

    with scripts_changed(monkeypatch, counting):
        add_and_run_plain_jobs(queue, make_worker)
        assert redis_client.hgetall(counter) == {}
        queue.add("delayed", delay=60_000)  # a delay is made by a lazy helper: the count works
        assert redis_client.hgetall(counter) == {"add_jobs": "1"}


def test_a_plain_job_passes_redis_call_no_number(
    monkeypatch, queue, make_worker, redis_client, prefix
):
    """Redis 7.0 formats each number argument of redis.call with "%.17g" (0.6-1.3 us, more
    than many commands): a plain job's add, fetch, finish and retention pass text only.
    Counted by a script text whose redis.call counts the numbers it is given."""
    counter = f"{prefix}:numbers"
    counting_call = f"""local function countNumbers(call, ...)
  for i = 2, select("#", ...) do
    if type((select(i, ...))) == "number" then
      redis.call("HINCRBY", "{counter}", SCRIPT .. " " .. (select(1, ...)), 1)
    end
  end
  return call(...)
end
local rcall = function(...) return countNumbers(redis.call, ...) end
local pcallCounted = function(...) return countNumbers(redis.pcall, ...) end
"""

    def counting(name: str, text: str) -> str:
        counted = counting_call.replace("SCRIPT", f'"{name}"')
        text = text.replace("local rcall = redis.call\n", counted, 1)
        return text.replace("redis.pcall(", "pcallCounted(")

    with scripts_changed(monkeypatch, counting):
        add_and_run_plain_jobs(queue, make_worker)
        numbers = redis_client.hgetall(counter)
        assert {k: v for k, v in numbers.items() if not k.startswith("move_stalled")} == {}
        queue.add("delayed", delay=60_000)  # a delayed job's score is a number: the count works
        assert "add_jobs ZADD" in redis_client.hgetall(counter)


def test_a_packed_call_is_the_command_redis_py_would_send():
    """pack_call builds EVALSHA's RESP bytes itself: the same bytes as redis-py's packer
    for text (ASCII and not), bytes, whole numbers and floats."""
    keys = ["bull:q:meta", "bull:q:ü"]
    args = ["bull:q", "", "déjà vu", b"\x00\xff raw", 0, -1, 1796412526465, 2.5, "x" * 600]
    packed = scripts.pack_call("move_to_finished", keys, args)
    sha = scripts.source("move_to_finished")[1]
    expected = b"".join(redis.Connection().pack_command("EVALSHA", sha, len(keys), *keys, *args))
    assert packed == expected
    # an id read from Redis that is not UTF-8 goes back as the same bytes
    assert scripts.pack_call("move_to_finished", [], ["\udcff"]).endswith(b"$1\r\n\xff\r\n")
