"""BullMQ 6 conformance (issue 16): behaviours checked against Node BullMQ 6's source.

Each test names its item of the issue. Those Node also has are checked against the real
npm package in tests/interop/test_conformance.py.
"""

from __future__ import annotations

import threading

import pytest

from flowjobs.engine import Worker


@pytest.fixture
def manual(redis_url, prefix):
    worker = Worker("q", None, connection=redis_url, prefix=prefix, drain_delay=0.2)
    yield worker
    worker.close()


# --- 1. local completed/failed events see the job as Redis now holds it -------------------
def test_completed_and_failed_listeners_see_the_updated_job(queue, make_worker, redis_client):
    seen = {}
    done = threading.Event()

    def process(job):
        if job.name == "bad":
            raise ValueError("broken")
        return {"n": 2}

    def snapshot(event):
        def listener(job, _value):
            seen[event] = (job.attempts_made, job.returnvalue, job.failed_reason, job.finished_on)
            if len(seen) == 2:
                done.set()

        return listener

    good = queue.add("good")
    bad = queue.add("bad")
    worker = make_worker("q", process, autorun=False)
    worker.on("completed", snapshot("completed")).on("failed", snapshot("failed"))
    worker.start()
    assert done.wait(10)
    good_key, bad_key = queue.keys.job(good.id), queue.keys.job(bad.id)
    assert seen["completed"] == (1, {"n": 2}, None, int(redis_client.hget(good_key, "finishedOn")))
    assert seen["failed"] == (1, None, "broken", int(redis_client.hget(bad_key, "finishedOn")))


# --- 2. manual processing updates the local Job -----------------------------------------
def test_manual_moves_update_the_local_job(queue, manual, redis_client):
    queue.add("a")
    queue.add("b")
    job = manual.get_next_job("t1")
    job.move_to_completed({"ok": True}, "t1")
    assert job.attempts_made == 1
    assert job.returnvalue == {"ok": True}
    assert job.finished_on == int(redis_client.hget(job.key, "finishedOn"))
    other = manual.get_next_job("t2")
    other.move_to_failed(RuntimeError("nope"), "t2")
    assert other.attempts_made == 1
    assert other.failed_reason == "nope"
    assert other.finished_on == int(redis_client.hget(other.key, "finishedOn"))
    assert "RuntimeError: nope" in other.stacktrace[-1]


# --- 3. get_next_job emits active -------------------------------------------------------------
def test_get_next_job_emits_active(queue, manual):
    queue.add("a")
    active = []
    manual.on("active", active.append)
    job = manual.get_next_job("t")
    assert [j.id for j in active] == [job.id]


# --- 4. move_to_failed with fetch_next hands back the next job on a retry with backoff --------
def test_move_to_failed_with_backoff_fetches_the_next_job(queue, manual):
    first = queue.add("a", attempts=3, backoff={"type": "fixed", "delay": 60_000})
    second = queue.add("b")
    job = manual.get_next_job("t")
    assert job.id == first.id
    following = job.move_to_failed(RuntimeError("again"), "t", fetch_next=True)
    assert queue.get_job_state(first.id) == "delayed"
    assert following is not None and following.id == second.id
    assert queue.get_job_state(second.id) == "active"
    assert job.attempts_made == 1 and job.finished_on is None
