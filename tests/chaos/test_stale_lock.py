"""A worker that lost its lock (Redis paused, process frozen, lock expired) cannot
overwrite the result of the worker that took the job over."""

from __future__ import annotations

import logging
import threading
import uuid

import pytest

from flowjobs.engine import LockMismatch, Queue, Worker
from tests.chaos.support import hold
from tests.helpers import wait_for
from tests.redis_server import RedisServer

pytestmark = pytest.mark.chaos


def completed_events(queue: Queue, job_id: str) -> list[dict]:
    return [
        fields
        for _, fields in queue.client.xrange(queue.keys.events)
        if fields.get("event") == "completed" and fields.get("jobId") == job_id
    ]


def test_stale_token_is_refused_after_a_stalled_takeover(redis_url: str, prefix: str) -> None:
    queue = Queue("q", connection=redis_url, prefix=prefix)
    old = Worker("q", None, connection=redis_url, prefix=prefix, lock_duration=300)
    new = Worker("q", None, connection=redis_url, prefix=prefix, lock_duration=30_000)
    try:
        job = queue.add("work", {"n": 1})
        first = old.get_next_job("old-token", block=False)
        assert first is not None and first.id == job.id
        lock_key = f"{job.key}:lock"
        wait_for(lambda: not queue.client.exists(lock_key), message="the lock never expired")
        assert first.extend_lock("old-token", 30_000) is False

        # two stalled checks: the first marks the active job, the second moves it
        moved: list[str] = []
        wait_for(
            lambda: moved.extend(queue.check_stalled(5, 1)) or moved,
            message="the stalled check never moved the job",
        )
        assert moved == [job.id]
        second = new.get_next_job("new-token", block=False)
        assert second is not None and second.id == job.id

        with pytest.raises(LockMismatch, match="held by another token"):
            first.move_to_completed("old result", "old-token")
        with pytest.raises(LockMismatch):
            first.move_to_failed(RuntimeError("old failure"), "old-token")
        assert queue.get_job_state(job.id) == "active"
        assert queue.client.get(lock_key) == "new-token"

        second.move_to_completed("new result", "new-token")
        with pytest.raises(LockMismatch, match="missing"):
            first.move_to_completed("old result", "old-token")

        final = queue.get_job(job.id)
        assert final.returnvalue == "new result"
        assert final.failed_reason is None
        assert final.attempts_made == 1
        assert final.attempts_started == 2
        assert final.stalled_counter == 1
        assert queue.get_job_state(job.id) == "completed"
        assert len(completed_events(queue, job.id)) == 1
    finally:
        old.close()
        new.close()
        queue.close()


def test_paused_redis_expires_locks_and_the_late_result_is_refused(caplog, report) -> None:
    caplog.set_level(logging.WARNING, logger="flowjobs")
    prefix = "chaos" + uuid.uuid4().hex[:8]
    lock_ms = 1000
    pause_s = lock_ms / 1000 + 1.5
    with RedisServer() as server:
        queue = Queue("q", connection=server.url, prefix=prefix)
        started = threading.Event()
        release = threading.Event()
        errors: list[BaseException] = []

        def slow(job):
            started.set()
            release.wait(30)
            return "late result"

        holder = Worker(
            "q",
            slow,
            connection=server.url,
            prefix=prefix,
            lock_duration=lock_ms,
            skip_stalled_check=True,
            drain_delay=0.5,
        )
        holder.on("error", errors.append)
        taker = None
        try:
            job = queue.add("work", {"n": 1})
            assert started.wait(10)
            server.pause()
            hold(pause_s)  # Redis frozen for longer than the lock duration
            server.unpause()

            taker = Worker(
                "q",
                lambda job: "new result",
                connection=server.url,
                prefix=prefix,
                lock_duration=lock_ms,
                stalled_interval=300,
                max_stalled_count=5,
                drain_delay=0.5,
            )
            wait_for(
                lambda: queue.get_job_state(job.id) == "completed",
                timeout=15,
                message="the job was never taken over",
            )
            release.set()
            wait_for(
                lambda: any(isinstance(e, LockMismatch) for e in errors),
                message="the old holder's completion was not refused",
            )
            final = queue.get_job(job.id)
            assert final.returnvalue == "new result"
            assert final.attempts_made == 1
            assert final.stalled_counter == 1
            assert len(completed_events(queue, job.id)) == 1
            messages = [r.getMessage() for r in caplog.records]
            assert any(f"lost the lock of job {job.id}" in m for m in messages), messages
            assert any(f"could not record completed of job {job.id}" in m for m in messages)
            report("pause_seconds", pause_s)
        finally:
            release.set()
            holder.close(force=True, timeout=5)
            if taker is not None:
                taker.close(force=True, timeout=5)
            queue.close()
