"""Public calls raise named flowjobs errors, never redis-py's, croniter's or Python's
own (RecursionError, TypeError, ValueError, AssertionError), and write nothing."""

from __future__ import annotations

import pytest

from flowjobs.engine import (
    Flow,
    InvalidArgument,
    InvalidJobData,
    Queue,
    RedisOutOfMemory,
    SchedulerError,
)
from tests.redis_server import RedisServer


def _nested(levels: int) -> list:
    value: list = []
    for _ in range(levels):
        value = [value]
    return value


def test_deep_data_is_invalid_job_data(queue, flow_producer, redis_client, prefix):
    for call in (
        lambda: queue.add("j", _nested(3_000)),
        lambda: queue.add("j", {"ok": 1}, remove_on_complete=True, job_id="x").update_data(
            _nested(3_000)
        ),
        lambda: flow_producer.add(Flow("j", "q", data=_nested(100_000))),
    ):
        with pytest.raises(InvalidJobData, match="MAX_JSON_DEPTH"):
            call()
    assert queue.get_job("x").data == {"ok": 1}


def test_a_cron_that_never_fires_is_a_scheduler_error(queue, redis_client, prefix):
    with pytest.raises(SchedulerError, match="never matches"):
        queue.upsert_job_scheduler("never", pattern="0 0 30 2 *")
    assert redis_client.keys(f"{prefix}:*") == []


@pytest.mark.parametrize(
    "call",
    [
        lambda q: q.rate_limit(-5),
        lambda q: q.rate_limit(float("nan")),
        lambda q: q.rate_limit("soon"),
        lambda q: q.trim_events(-1),
        lambda q: q.set_events_max_length(0),
        lambda q: q.set_events_max_length("100"),
        lambda q: q.set_events_max_length(True),
        lambda q: q.promote_jobs(count="a"),
        lambda q: q.retry_jobs(count=0),
        lambda q: q.clean(-1),
        lambda q: q.obliterate(count=0),
        lambda q: q.get_jobs(123),
        lambda q: q.get_jobs([1]),
        lambda q: q.get_job_ids("failed", start="a"),
        lambda q: q.set_global_rate_limit(0, 1000),
        lambda q: q.check_stalled(-1),
        lambda q: q.get_metrics("completed", start=1.5),
    ],
)
def test_bad_arguments_are_invalid_argument(queue, redis_client, prefix, call):
    with pytest.raises(InvalidArgument):
        call(queue)
    assert redis_client.keys(f"{prefix}:*") == []


def test_a_full_redis_is_redis_out_of_memory():
    with RedisServer(["--maxmemory", "1mb", "--maxmemory-policy", "noeviction"]) as server:
        queue = Queue("q", connection=server.url, prefix="full")
        try:
            with pytest.raises(RedisOutOfMemory, match="out of memory"):
                queue.add("j", {"n": 1})
            with pytest.raises(RedisOutOfMemory):
                queue.add_bulk([("j", {"n": n}) for n in range(3)])
            assert queue.get_job_counts()["waiting"] == 0
        finally:
            queue.close()
