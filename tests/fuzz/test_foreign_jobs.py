"""Jobs written by hand, as a foreign or buggy producer might: missing fields, data
or options that are not JSON, odd option values, a huge payload. The worker fails
what it cannot run, with a reason that says why, and goes on with the rest."""

from __future__ import annotations

import json
import logging
import threading
import time

import pytest

from flowjobs.engine import Queue, Worker
from tests.helpers import wait_for

HUGE_BYTES = 5 * 1024 * 1024

# id -> the job hash a foreign producer wrote (None: the id is pushed with no hash)
FOREIGN_JOBS: dict[str, dict[str, str] | None] = {
    "ghost": None,
    "bare": {"data": "{}"},
    "no-data": {"name": "x", "opts": "{}", "timestamp": "1"},
    "bad-data": {"name": "x", "data": "{not json", "opts": "{}", "timestamp": "1"},
    "bad-opts": {"name": "x", "data": "{}", "opts": "[1, 2", "timestamp": "1"},
    "list-opts": {"name": "x", "data": "{}", "opts": "[1, 2]", "timestamp": "1"},
    "odd-opts": {
        "name": "x",
        "data": '{"a": 1}',
        "opts": json.dumps(
            {
                "attempts": "three",
                "backoff": "weird",
                "removeOnComplete": "yes",
                "kl": -5,
                "stackTraceLimit": "x",
                "somethingNew": {"nested": [1, 2]},
            }
        ),
        "timestamp": "1",
    },
    "bad-numbers": {
        "name": "x",
        "data": "{}",
        "opts": "{}",
        "timestamp": "soon",
        "delay": "x",
        "priority": "-3",
        "atm": "NaN",
        "ats": "many",
    },
    "bad-parent": {
        "name": "x",
        "data": "{}",
        "opts": "{}",
        "timestamp": "1",
        "parentKey": "nowhere:at:all",
        "parent": "{broken",
    },
}
# outcome expected per foreign job: "completed", or the text the failed reason must hold
EXPECTED = {
    "ghost": "no job hash",
    "bare": "completed",
    "no-data": "completed",
    "bad-data": "data that is not valid JSON",
    "bad-opts": "options that are not a valid JSON object",
    "list-opts": "options that are not a valid JSON object",
    "odd-opts": "completed",
    "bad-numbers": "completed",
    "bad-parent": "completed",
    "huge": "completed",
}


@pytest.fixture
def foreign_queue(redis_url: str, prefix: str):
    queue = Queue("foreign", connection=redis_url, prefix=prefix)
    yield queue
    queue.close()


def push_by_hand(queue: Queue, job_id: str, fields: dict[str, str] | None) -> None:
    pipe = queue.client.pipeline(transaction=True)
    if fields is not None:
        pipe.hset(queue.keys.job(job_id), mapping=fields)
    pipe.lpush(queue.keys.key("wait"), job_id)
    pipe.zadd(queue.keys.marker, {"0": 0})
    pipe.execute()


def test_worker_fails_what_it_cannot_run_and_goes_on(foreign_queue, redis_url, prefix):
    queue = foreign_queue
    huge = json.dumps({"blob": "x" * HUGE_BYTES})
    for job_id, fields in FOREIGN_JOBS.items():
        push_by_hand(queue, job_id, fields)
    push_by_hand(
        queue,
        "huge",
        {"name": "big", "data": huge, "opts": "{}", "timestamp": str(int(time.time() * 1000))},
    )
    good = [queue.add("good", {"n": n}) for n in range(5)]
    seen = threading.Event()

    def process(job):
        seen.set()
        return {"size": len(json.dumps(job.data))}

    worker = Worker(
        "foreign",
        process,
        connection=redis_url,
        prefix=prefix,
        concurrency=3,
        lock_duration=5000,
        stalled_interval=500,
        drain_delay=0.5,
    )
    try:
        expected_ids = {*EXPECTED, *(job.id for job in good)}

        def finished() -> bool:
            done = set(queue.get_job_ids(["completed", "failed"]))
            return expected_ids <= done

        wait_for(finished, timeout=30, message=f"not all finished: {queue.get_job_counts()}")
    finally:
        worker.close(timeout=10)

    for job in good:
        assert queue.get_job(job.id).returnvalue == {"size": len(json.dumps({"n": job.data["n"]}))}
    for job_id, outcome in EXPECTED.items():
        state = queue.get_job_state(job_id)
        stored = queue.get_job(job_id)
        if outcome == "completed":
            assert state == "completed", (job_id, state, stored and stored.failed_reason)
        else:
            assert state == "failed", (job_id, state)
            assert outcome in stored.failed_reason, (job_id, stored.failed_reason)
            assert f'"{job_id}"' in stored.failed_reason
    assert queue.get_job("huge").returnvalue == {"size": len(huge)}
    counts = queue.get_job_counts()
    assert counts["active"] == counts["waiting"] == 0


def test_a_job_key_of_the_wrong_type_is_dropped_and_reported(
    foreign_queue, redis_url, prefix, caplog
):
    """A foreign producer wrote a list where a job hash should be, and queued its id; a
    string sits under another id that is already in active (a crashed foreign worker).
    Fetching and the stalled check drop both ids with a `failed` event naming the
    problem, no script fails half-way, and the other jobs complete."""
    queue = foreign_queue
    queue.client.rpush(queue.keys.job("wrong-type"), "not", "a", "hash")
    queue.client.lpush(queue.keys.key("wait"), "wrong-type")
    queue.client.set(queue.keys.job("stuck-string"), "not a hash")
    queue.client.lpush(queue.keys.key("active"), "stuck-string")
    good = [queue.add("good", {"n": n}) for n in range(6)]
    worker = Worker(
        "foreign",
        lambda job: job.data["n"],
        connection=redis_url,
        prefix=prefix,
        concurrency=2,
        lock_duration=1000,
        stalled_interval=300,
        drain_delay=0.5,
    )
    try:
        wait_for(
            lambda: all(queue.get_job_state(job.id) == "completed" for job in good),
            timeout=20,
            message=f"the good jobs did not complete: {queue.get_job_counts()}",
        )
        wait_for(
            lambda: queue.client.lrange(queue.keys.key("active"), 0, -1) == [],
            timeout=20,
            message="the stalled check did not drop the string key's id from active",
        )
        assert worker.is_running()
    finally:
        worker.close(timeout=10)
    assert [queue.get_job(job.id).returnvalue for job in good] == list(range(6))
    assert queue.client.lrange(queue.keys.key("wait"), 0, -1) == []
    failed = {
        fields["jobId"]: fields
        for _, fields in queue.client.xrange(queue.keys.key("events"))
        if fields.get("event") == "failed"
    }
    assert failed["wrong-type"]["failedReason"] == "the job key holds a list, not a job hash"
    assert failed["wrong-type"]["prev"] == "waiting"
    assert failed["stuck-string"]["failedReason"] == "the job key holds a string, not a job hash"
    assert failed["stuck-string"]["prev"] == "active"
    # the foreign keys themselves are left alone
    assert queue.client.type(queue.keys.job("wrong-type")) == "list"
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
