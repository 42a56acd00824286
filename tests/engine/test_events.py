"""QueueEvents: every transition is written to the stream and read back in order."""

from __future__ import annotations

import threading

from flowjobs.engine import QueueEvents
from tests.helpers import wait_for


def test_listener_sees_the_lifecycle_in_order(queue, make_worker, redis_url, prefix):
    seen: list[tuple[str, str]] = []
    completed = threading.Event()
    events = QueueEvents("q", connection=redis_url, prefix=prefix)
    try:
        events.on("*", lambda e: seen.append((e["event"], e.get("jobId", ""))))
        events.on(
            "completed",
            lambda e: completed.set() if e["returnvalue"] == {"v": 2} else None,
        )
        job = queue.add("x", {"v": 1})
        make_worker("q", lambda job: {"v": job.data["v"] + 1})
        assert completed.wait(10)
        wait_for(lambda: ("drained", "") in seen)
    finally:
        events.close()
    assert seen == [
        ("added", job.id),
        ("waiting", job.id),
        ("active", job.id),
        ("completed", job.id),
        ("drained", ""),
    ]


def test_listener_for_one_job_and_progress_and_delayed(queue, redis_url, prefix):
    progress: list[dict] = []
    delayed: list[dict] = []
    events = QueueEvents("q", connection=redis_url, prefix=prefix)
    try:
        events.on("delayed", delayed.append)
        job = queue.add("x", delay=5000)
        other = queue.add("y")
        events.on(f"progress:{job.id}", progress.append)
        other.update_progress(99)
        job.update_progress(33)
        wait_for(lambda: len(progress) == 1 and len(delayed) == 1)
        assert progress[0]["event"] == "progress" and progress[0]["data"] == 33
        assert delayed[0]["jobId"] == job.id and delayed[0]["delay"] == job.timestamp + 5000
    finally:
        events.close()


def test_events_stream_is_trimmed(queue, redis_client, prefix):
    redis_client.hset(f"{prefix}:q:meta", "opts.maxLenEvents", 100)
    queue.add_bulk([{"name": "x"} for _ in range(2000)])
    assert redis_client.xlen(f"{prefix}:q:events") < 1000


def test_the_events_streams_cap_is_the_queues_meta_as_node_writes_it(queue, redis_client, prefix):
    """set_events_max_length writes Node's `opts.maxLenEvents`, which every script that
    emits an event trims the stream to; unset, the cap is the scripts' 10,000."""
    assert queue.get_events_max_length() == 10_000
    queue.set_events_max_length(3000)
    assert redis_client.hget(f"{prefix}:q:meta", "opts.maxLenEvents") == "3000"
    assert queue.get_events_max_length() == 3000
    queue.add_bulk([{"name": "x"} for _ in range(2500)])  # 5,000 events
    # trimmed approximately: whole stream nodes of 100 entries
    assert 3000 <= redis_client.xlen(f"{prefix}:q:events") < 3100


def test_a_foreign_events_cap_that_xadd_refuses_does_not_stop_jobs(
    queue, make_worker, redis_client, prefix
):
    """The cap goes to XADD as the stored text when it is a whole number; another value a
    foreign client wrote is made one ("1e4", "12.5", 10^15 for more), or, unusable ("-5",
    "x"), set back to the default: XADD refusing it would fail every script that emits
    an event."""
    meta = f"{prefix}:q:meta"
    huge = "9" * 25  # past what XADD takes: 10^15
    for stored, kept in [("1e4", True), ("12.5", True), (huge, True), ("-5", False), ("x", False)]:
        redis_client.hset(meta, "opts.maxLenEvents", stored)
        job = queue.add("x")
        assert job.id
        if not kept:  # reset to the default, as for an unset cap
            assert redis_client.hget(meta, "opts.maxLenEvents") == "10000"
        else:  # left as written
            assert redis_client.hget(meta, "opts.maxLenEvents") == stored
    done: list[str] = []
    worker = make_worker("q", lambda job: done.append(job.id), autorun=False)
    worker.start()
    wait_for(lambda: len(done) == 5)
    worker.close()
    assert queue.get_job_counts("completed")["completed"] == 5
