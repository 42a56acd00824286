"""Cancelling a running job from outside: sync, async and isolated processors."""

from __future__ import annotations

import asyncio
import json
import threading

import pytest

from flowjobs.engine import JobNotFound
from tests.helpers import wait_for


def test_a_sync_processor_sees_the_flag_and_the_job_fails(queue, make_worker):
    started = threading.Event()

    def process(job):
        started.set()
        job.cancellation.wait(10)
        job.raise_if_cancelled()
        return "not cancelled"

    job = queue.add("long", {}, attempts=3)
    make_worker("q", process)
    assert started.wait(5)
    assert queue.cancel_job(job.id, "user asked") is True
    wait_for(lambda: queue.get_job_state(job.id) == "failed")
    failed = queue.get_job(job.id)
    assert failed.failed_reason == "cancelled: user asked"
    assert failed.attempts_made == 1  # no retry after a cancel


def test_an_async_processor_is_interrupted(queue, make_worker):
    seen = []
    started = threading.Event()

    async def process(job):
        started.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            seen.append(job.is_cancelled())
            raise

    job = queue.add("long")
    after = queue.add("next")
    make_worker("q", process)
    assert started.wait(5)
    assert queue.cancel_job(job.id, "stop") is True
    wait_for(lambda: queue.get_job_state(job.id) == "failed")
    assert queue.get_job(job.id).failed_reason == "cancelled: stop"
    assert seen == [True]
    assert queue.get_job_state(after.id) in ("active", "waiting")  # the worker goes on


def test_an_isolated_processor_is_killed(queue, make_worker):
    job = queue.add("spin", {"seconds": 30})
    after = queue.add("spin", {"seconds": 0})
    make_worker("q", "tests.engine.isolated_processors:spin", isolation="process")
    wait_for(lambda: queue.get_job_state(job.id) == "active", timeout=10)
    assert queue.cancel_job(job.id, "too slow") is True
    wait_for(lambda: queue.get_job_state(job.id) == "failed", timeout=10)
    assert queue.get_job(job.id).failed_reason == "cancelled: too slow"
    wait_for(lambda: queue.get_job_state(after.id) == "completed", timeout=15)


def test_only_running_jobs_can_be_cancelled(queue):
    job = queue.add("waiting")
    assert queue.cancel_job(job.id) is False
    with pytest.raises(JobNotFound):
        queue.cancel_job("nope")


def test_a_missed_message_is_found_at_lock_renewal(queue, make_worker, redis_client, prefix):
    started = threading.Event()

    def process(job):
        started.set()
        job.cancellation.wait(10)
        job.raise_if_cancelled()

    job = queue.add("long")
    make_worker("q", process, lock_duration=1_000, lock_renew_time=200)
    assert started.wait(5)
    token = redis_client.get(f"{prefix}:q:{job.id}:lock")
    # the request as cancel_job stores it, without the published message
    redis_client.hset(
        f"{prefix}:q:{job.id}", "cancel", json.dumps({"token": token, "reason": "quiet"})
    )
    wait_for(lambda: queue.get_job_state(job.id) == "failed", timeout=5)
    assert queue.get_job(job.id).failed_reason == "cancelled: quiet"


def test_a_request_for_an_earlier_run_does_not_cancel_the_next(
    queue, make_worker, redis_client, prefix
):
    job = queue.add("x")
    redis_client.hset(
        f"{prefix}:q:{job.id}", "cancel", json.dumps({"token": "old-run", "reason": "late"})
    )
    make_worker("q", lambda job: "ran", lock_duration=1_000, lock_renew_time=100)
    wait_for(lambda: queue.get_job_state(job.id) == "completed")
    assert queue.get_job(job.id).returnvalue == "ran"
