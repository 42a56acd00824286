"""Cancelling a running job from outside: sync, async and isolated processors."""

from __future__ import annotations

import asyncio
import json
import threading

import pytest

from flowjobs.engine import JobNotFound, cancellation
from tests.helpers import until_cancelled, wait_for


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
            await until_cancelled(30)
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


# --- the worker's own cancel_job / cancel_all_jobs, and the signal (issue 16, item 10) ------


def test_worker_cancel_job_hands_the_signal_to_a_sync_processor(queue, make_worker):
    started = threading.Event()
    seen = []

    def process(job, token, signal):
        started.set()
        signal.wait(30)  # instead of time.sleep: returns as soon as the job is cancelled
        seen.append((signal.aborted, signal.reason))
        signal.throw_if_aborted()
        return "not cancelled"

    job = queue.add("pay", {}, attempts=3)
    worker = make_worker("q", process)
    assert started.wait(5)
    assert worker.cancel_job("no-such-job", "x") is False
    assert worker.cancel_job(job.id, "user asked") is True
    wait_for(lambda: queue.get_job_state(job.id) == "failed")
    failed = queue.get_job(job.id)
    assert failed.failed_reason == "cancelled: user asked"
    assert failed.attempts_made == 1  # no retry
    assert seen == [(True, "user asked")]


def test_worker_cancel_all_jobs_stops_every_running_job(queue, make_worker):
    started = []
    waits = []

    async def process(job, token, signal):
        started.append(job.id)
        assert not signal.aborted
        try:
            await signal.wait_async(30)
        except asyncio.CancelledError:
            waits.append(signal.reason)
            raise

    jobs = [queue.add("long") for _ in range(3)]
    worker = make_worker("q", process, concurrency=3)
    wait_for(lambda: len(started) == 3)
    assert worker.cancel_all_jobs("shutting down") == 3
    for job in jobs:
        wait_for(lambda job=job: queue.get_job_state(job.id) == "failed")
        assert queue.get_job(job.id).failed_reason == "cancelled: shutting down"
    assert waits == ["shutting down"] * 3
    assert worker.cancel_all_jobs("nothing left") == 0


def test_a_thread_processor_that_ignores_the_signal_runs_to_its_end(queue, make_worker):
    started, release = threading.Event(), threading.Event()
    signals = []

    def process(job, token, signal):
        signals.append(signal)
        started.set()
        release.wait(10)
        return {"aborted": signal.aborted}

    job = queue.add("captured")
    worker = make_worker("q", process)
    assert started.wait(5)
    assert worker.cancel_job(job.id, "too late") is True
    wait_for(lambda: signals[0].aborted)
    release.set()
    # as in Node: a processor that does not check its signal finishes its work
    wait_for(lambda: queue.get_job_state(job.id) == "completed")
    assert queue.get_job(job.id).returnvalue == {"aborted": True}


def test_the_worker_answers_what_it_did(queue, make_queue, make_worker):
    """cancel_and_confirm: a thread is only signalled, async code interrupted, a child
    process killed; the caller (the admin) can say which."""
    started = threading.Event()

    def sync_process(job):
        started.set()
        job.cancellation.wait(30)
        job.raise_if_cancelled()

    job = queue.add("long")
    make_worker("q", sync_process)
    assert started.wait(5)
    assert queue.cancel_and_confirm(job.id, "a") == "signalled"
    wait_for(lambda: queue.get_job_state(job.id) == "failed")
    assert queue.cancel_and_confirm(job.id, "again") == "not running"

    async_queue = make_queue("aq")
    async_started = threading.Event()

    async def async_process(job):
        async_started.set()
        await until_cancelled(30)

    job = async_queue.add("long")
    make_worker("aq", async_process)
    assert async_started.wait(5)
    assert async_queue.cancel_and_confirm(job.id, "b") == "interrupted"

    process_queue = make_queue("pq")
    job = process_queue.add("spin", {"seconds": 30})
    make_worker("pq", "tests.engine.isolated_processors:spin_reporting", isolation="process")
    # running in the child (active alone is before a child has it: see the next test)
    wait_for(lambda: process_queue.get_job(job.id).progress == "spinning", timeout=10)
    assert process_queue.cancel_and_confirm(job.id, "c", timeout=5) == "killed"
    wait_for(lambda: process_queue.get_job_state(job.id) == "failed")
    assert process_queue.get_job(job.id).failed_reason == "cancelled: c"


def test_a_child_process_processor_gets_a_signal_too(queue, make_worker):
    job = queue.add("report")
    make_worker("q", "tests.engine.isolated_processors:report_signal", isolation="process")
    wait_for(lambda: queue.get_job_state(job.id) == "completed", timeout=15)
    assert queue.get_job(job.id).returnvalue == {"aborted": False, "reason": None, "token": True}


def test_a_job_cancelled_before_a_child_process_has_it_fails_and_is_answered(queue, make_worker):
    """A request can reach a process-isolation worker after it took the job and before a
    child has it (seen on Python 3.11, where the pool starts slower): the job fails
    without running, and the worker answers "not started"; it gave no answer, and
    cancel_and_confirm said "no answer" after its timeout."""
    pubsub = queue.client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(cancellation.answer_channel(queue.keys))
    worker = make_worker(
        "q", "tests.engine.isolated_processors:spin_reporting", isolation="process"
    )
    # the request as the job starts: the listener runs on the worker's loop, before the
    # job is handed to the pool
    worker.on("active", lambda job: worker._cancel(job, "early"))
    job = queue.add("spin", {"seconds": 30})
    wait_for(lambda: queue.get_job_state(job.id) == "failed", timeout=10)
    assert queue.get_job(job.id).failed_reason == "cancelled: early"
    assert queue.get_job(job.id).progress != "spinning"  # no child ran it
    message = wait_for(lambda: pubsub.get_message(timeout=0.1), timeout=10)
    assert json.loads(message["data"])["how"] == "not started"
    pubsub.close()


def test_the_signal_waits_time_out_while_not_cancelled(queue):
    from flowjobs.engine import CancellationSignal, Job

    job = Job(queue, "1", {"name": "x"})
    signal = CancellationSignal(job)
    assert signal.wait(0.01) is False
    assert asyncio.run(signal.wait_async(0.01)) is False
    signal.throw_if_aborted()  # not cancelled: no error

    async def wait_then_cancel() -> bool:
        waiting = asyncio.ensure_future(signal.wait_async(5))
        await asyncio.sleep(0)
        threading.Thread(target=job.mark_cancelled, args=("later",)).start()
        return await waiting

    assert asyncio.run(wait_then_cancel()) is True
    assert signal.wait(0) is True and signal.reason == "later"
    with pytest.raises(Exception, match="cancelled: later"):
        signal.throw_if_aborted()
