"""The "Manually processing jobs" pattern: a worker without a processor, and tokens."""

from __future__ import annotations

import pytest

from flowjobs.engine import JobNotInState, LockMismatch, Worker


@pytest.fixture
def manual(redis_url, prefix):
    worker = Worker("q", None, connection=redis_url, prefix=prefix, drain_delay=0.2)
    yield worker
    worker.close()


def test_get_next_job_complete_with_fetch_next(queue, manual, redis_client, prefix):
    queue.add("a", {"i": 1})
    queue.add("b", {"i": 2})
    job = manual.get_next_job("my-token")
    assert job.name == "a" and job.token == "my-token"
    assert redis_client.get(f"{prefix}:q:{job.id}:lock") == "my-token"
    following = job.move_to_completed({"ok": 1}, "my-token", fetch_next=True)
    assert following is not None and following.name == "b"
    assert redis_client.get(f"{prefix}:q:{following.id}:lock") == following.token
    assert queue.get_job(job.id).returnvalue == {"ok": 1}
    assert following.move_to_failed(RuntimeError("nope"), following.token, fetch_next=True) is None
    assert queue.get_job(following.id).failed_reason == "nope"
    assert manual.get_next_job(block=False) is None


def test_get_next_job_blocks_on_the_marker_until_timeout(manual):
    assert manual.get_next_job(block=True, timeout=0.2) is None


def test_wrong_or_expired_token_is_refused_and_writes_nothing(queue, manual, redis_client, prefix):
    queue.add("a")
    job = manual.get_next_job("right")
    with pytest.raises(LockMismatch, match="another token"):
        job.move_to_completed("x", "wrong")
    assert queue.get_job_state(job.id) == "active"
    assert redis_client.hget(f"{prefix}:q:{job.id}", "returnvalue") is None
    redis_client.delete(f"{prefix}:q:{job.id}:lock")
    with pytest.raises(LockMismatch, match="missing"):
        job.move_to_completed("x", "right")
    assert queue.get_job_state(job.id) == "active"


def test_extend_lock_and_move_to_wait(queue, manual, redis_client, prefix):
    queue.add("a")
    job = manual.get_next_job("tok")
    assert job.extend_lock("tok", 60_000)
    assert redis_client.pttl(f"{prefix}:q:{job.id}:lock") > 30_000
    assert not job.extend_lock("other", 60_000)
    assert job.move_to_wait("tok") == 0
    assert queue.get_job_state(job.id) == "waiting"
    assert redis_client.exists(f"{prefix}:q:{job.id}:lock") == 0
    with pytest.raises(JobNotInState):
        queue.get_job(job.id).move_to_completed("x", "0")


def test_move_to_failed_retries_while_attempts_remain(queue, manual):
    queue.add("a", attempts=2)
    job = manual.get_next_job("t1")
    job.move_to_failed(RuntimeError("first"), "t1")
    assert queue.get_job_state(job.id) == "waiting"
    job = manual.get_next_job("t2")
    job.move_to_failed(RuntimeError("second"), "t2")
    assert queue.get_job_state(job.id) == "failed"
    assert queue.get_job(job.id).attempts_made == 2


def test_manual_stalled_check_timer(queue, manual, redis_client, prefix):
    queue.add("a")
    job = manual.get_next_job("t")
    redis_client.delete(f"{prefix}:q:{job.id}:lock")
    manual.stalled_interval = 50
    stalled = []
    manual.on("stalled", stalled.append)
    manual.start_stalled_check_timer()
    from tests.helpers import wait_for

    wait_for(lambda: stalled == [job.id])
    assert queue.get_job_state(job.id) == "waiting"
