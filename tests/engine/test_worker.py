"""Workers: processing, outcomes, retries with backoff, processor signals, closing."""

from __future__ import annotations

import asyncio
import json
import threading
import time

import pytest

from flowjobs.engine import (
    Backoff,
    DelayedError,
    RateLimitError,
    UnrecoverableError,
    register_backoff,
)
from tests.helpers import wait_for, work_for


def finished(queue, job_id: str, state: str = "completed"):
    return wait_for(
        lambda: queue.get_job_state(job_id) == state,
        message=f"job {job_id} never reached {state}",
    )


def test_sync_processor_result_is_stored_as_json(queue, make_worker, redis_client, prefix):
    job = queue.add("double", {"n": 21})
    make_worker("q", lambda job: {"result": job.data["n"] * 2})
    finished(queue, job.id)
    stored = redis_client.hgetall(f"{prefix}:q:{job.id}")
    assert json.loads(stored["returnvalue"]) == {"result": 42}
    assert stored["atm"] == "1" and stored["ats"] == "1"
    assert int(stored["finishedOn"]) >= int(stored["processedOn"]) >= job.timestamp
    assert queue.get_job(job.id).returnvalue == {"result": 42}


def test_async_processor_runs_on_the_event_loop(queue, make_worker):
    seen_threads = set()

    async def process(job):
        seen_threads.add(threading.current_thread().name)
        await asyncio.sleep(0)
        await job.aupdate_progress(50)
        return job.data["n"] + 1

    jobs = queue.add_bulk([{"name": "inc", "data": {"n": i}} for i in range(20)])
    make_worker("q", process, concurrency=5)
    for job in jobs:
        finished(queue, job.id)
    assert [queue.get_job(j.id).returnvalue for j in jobs] == list(range(1, 21))
    assert queue.get_job(jobs[0].id).progress == 50
    assert len(seen_threads) == 1 and next(iter(seen_threads)).startswith("flowjobs-worker")


def test_processor_may_ask_for_the_token(queue, make_worker):
    tokens = []

    def process(job, token):
        tokens.append(token)
        return job.extend_lock(token, 10_000)

    job = queue.add("t")
    make_worker("q", process)
    finished(queue, job.id)
    assert queue.get_job(job.id).returnvalue is True
    assert tokens and tokens[0].endswith(":1")


def test_failure_stores_reason_and_stacktrace(queue, make_worker, redis_client, prefix):
    def process(job):
        raise ValueError("no such customer 7")

    job = queue.add("charge", {})
    make_worker("q", process)
    finished(queue, job.id, "failed")
    stored = redis_client.hgetall(f"{prefix}:q:{job.id}")
    assert stored["failedReason"] == "no such customer 7"
    stack = json.loads(stored["stacktrace"])
    assert len(stack) == 1 and "ValueError: no such customer 7" in stack[0]
    events = [f for _, f in redis_client.xrange(f"{prefix}:q:events")]
    failed = [e for e in events if e["event"] == "failed"]
    assert failed == [
        {
            "event": "failed",
            "jobId": job.id,
            "failedReason": "no such customer 7",
            "prev": "active",
        }
    ]
    assert any(e["event"] == "retries-exhausted" for e in events)


def _attempt_times(calls):
    return [t for t in calls]


@pytest.mark.parametrize(
    ("backoff", "gaps"),
    [
        (Backoff.fixed(200), [200, 200]),
        (Backoff.exponential(100), [100, 200]),
    ],
)
def test_retries_with_backoff_wait_at_least_the_delay(
    queue, make_worker, redis_client, prefix, backoff, gaps
):
    starts = []

    def process(job):
        starts.append(job.processed_on)
        raise RuntimeError(f"attempt {job.attempts_made + 1}")

    job = queue.add("flaky", attempts=3, backoff=backoff)
    make_worker("q", process)
    finished(queue, job.id, "failed")
    assert len(starts) == 3
    for expected, earlier, later in zip(gaps, starts, starts[1:], strict=False):
        assert later - earlier >= expected
    stored = redis_client.hgetall(f"{prefix}:q:{job.id}")
    assert stored["atm"] == "3" and stored["failedReason"] == "attempt 3"
    assert len(json.loads(stored["stacktrace"])) == 3
    events = [f["event"] for _, f in redis_client.xrange(f"{prefix}:q:events")]
    assert events.count("delayed") == 2 and events.count("failed") == 1


def test_retry_without_backoff_and_jitter_and_custom_strategy(queue, make_worker):
    register_backoff("tenfold", lambda attempts, error, job: 10 * attempts)
    outcomes = {}

    def process(job):
        if job.attempts_made < 2:
            raise RuntimeError("again")
        outcomes[job.name] = job.attempts_made
        return "ok"

    plain = queue.add("plain", attempts=3)
    jitter = queue.add("jitter", attempts=3, backoff=Backoff.exponential(50, jitter=0.5))
    custom = queue.add("custom", attempts=3, backoff=Backoff.custom("tenfold"))
    make_worker("q", process, concurrency=3)
    for job in (plain, jitter, custom):
        finished(queue, job.id)
    assert outcomes == {"plain": 2, "jitter": 2, "custom": 2}


def test_unknown_custom_backoff_fails_the_job(queue, make_worker):
    def process(job):
        raise RuntimeError("boom")

    job = queue.add("x", attempts=5, backoff={"type": "no-such-strategy"})
    make_worker("q", process)
    finished(queue, job.id, "failed")
    assert queue.get_job(job.id).attempts_made == 1


def test_unrecoverable_error_is_not_retried(queue, make_worker):
    def process(job):
        raise UnrecoverableError("bad card")

    job = queue.add("x", attempts=5, backoff=10)
    make_worker("q", process)
    finished(queue, job.id, "failed")
    stored = queue.get_job(job.id)
    assert stored.attempts_made == 1 and stored.failed_reason == "bad card"


def test_non_json_return_value_fails_the_job_clearly(queue, make_worker):
    job = queue.add("x")
    make_worker("q", lambda job: {1, 2})
    finished(queue, job.id, "failed")
    assert "JSON" in queue.get_job(job.id).failed_reason


def test_step_job_with_update_data_and_delayed_error(queue, make_worker):
    """The "Process step jobs" pattern: each step saves its progress and re-delays."""
    import time as clock

    def process(job, token):
        step = job.data["step"]
        if step < 3:
            job.update_data({"step": step + 1, "done": job.data["done"] + [step]})
            job.move_to_delayed(int(clock.time() * 1000) + 50, token)
            raise DelayedError()
        return job.data["done"]

    job = queue.add("steps", {"step": 1, "done": []})
    make_worker("q", process)
    finished(queue, job.id)
    done = queue.get_job(job.id)
    assert done.returnvalue == [1, 2]
    assert done.attempts_made == 1  # delays do not count as attempts
    assert done.attempts_started == 3


def test_rate_limit_error_puts_the_job_back_without_an_attempt(queue, make_worker):
    calls = []

    def process(job):
        calls.append(job.attempts_made)
        if len(calls) == 1:
            queue.rate_limit(300)
            raise RateLimitError()
        return "done"

    job = queue.add("x")
    make_worker("q", process, limiter={"max": 100, "duration": 1000})
    finished(queue, job.id)
    assert calls == [0, 0]
    assert queue.get_job(job.id).attempts_made == 1


def test_priority_and_lifo_order_of_processing(queue, make_worker):
    order = []
    for name, options in [
        ("low", {"priority": 10}),
        ("high", {"priority": 1}),
        ("fifo1", {}),
        ("fifo2", {}),
        ("urgent", {"lifo": True}),
        ("mid", {"priority": 5}),
    ]:
        queue.add(name, **options)
    worker = make_worker("q", lambda job: order.append(job.name))
    wait_for(lambda: len(order) == 6)
    worker.close()
    # plain wait jobs first (LIFO one first), then by priority
    assert order == ["urgent", "fifo1", "fifo2", "high", "mid", "low"]


def test_delayed_job_does_not_start_before_its_time(queue, make_worker):
    job = queue.add("later", delay=400)
    make_worker("q", lambda job: None)
    finished(queue, job.id)
    stored = queue.get_job(job.id)
    assert stored.processed_on >= job.timestamp + 400


def test_graceful_close_finishes_active_jobs(queue, make_worker):
    started = threading.Event()
    release = threading.Event()

    def process(job):
        started.set()
        release.wait(10)
        return "finished"

    job = queue.add("long")
    worker = make_worker("q", process)
    assert started.wait(5)
    closer = threading.Thread(target=worker.close)
    closer.start()
    queue.add("not-taken")
    release.set()
    closer.join(10)
    assert not closer.is_alive()
    assert queue.get_job_state(job.id) == "completed"
    assert queue.get_job_counts("waiting") == {"waiting": 1}


@pytest.mark.parametrize("kind", ["def", "async def"])
def test_a_graceful_close_keeps_renewing_the_locks_of_the_jobs_it_waits_for(
    queue, make_worker, redis_client, prefix, kind
):
    # A job that runs on past its lock duration after close() began kept its lock only
    # until then: its completion was refused (lock missing) and the stalled check gave
    # it to another worker, which ran it a second time.
    started, release = threading.Event(), threading.Event()
    if kind == "def":

        def process(job):
            started.set()
            assert release.wait(20)
            return "finished"

    else:

        async def process(job):
            started.set()
            await asyncio.to_thread(release.wait, 20)
            return "finished"

    job = queue.add("long")
    worker = make_worker("q", process, lock_duration=1000, autorun=False)
    renewals_after_close: list[int] = []
    closing = threading.Event()
    worker.on("locks_renewed", lambda info: closing.is_set() and renewals_after_close.append(1))
    worker.start()
    assert started.wait(5)
    closing.set()
    closer = threading.Thread(target=worker.close)
    closer.start()
    try:
        # three renewals (every 500 ms) after the close began: past the 1 s lock duration
        wait_for(lambda: len(renewals_after_close) >= 3, timeout=10)
        assert redis_client.pttl(f"{prefix}:q:{job.id}:lock") > 0
    finally:
        release.set()
    closer.join(10)
    assert not closer.is_alive()
    finished = queue.get_job(job.id)
    assert (finished.get_state(), finished.returnvalue) == ("completed", "finished")


def test_forced_close_leaves_the_job_active(queue, make_worker):
    started = threading.Event()
    release = threading.Event()

    def process(job):
        started.set()
        release.wait(10)

    job = queue.add("long")
    worker = make_worker("q", process)
    assert started.wait(5)
    worker.close(force=True)
    assert worker.wait_until_closed(5)
    assert queue.get_job_state(job.id) == "active"
    release.set()


def test_local_pause_stops_taking_jobs(queue, make_worker):
    done = []
    worker = make_worker("q", lambda job: done.append(job.id))
    queue.add("a")
    wait_for(lambda: done == ["1"])
    worker.pause()
    queue.add("b")
    queue.add("c")
    wait_for(lambda: queue.get_job_counts("waiting")["waiting"] == 2)
    worker.resume()
    wait_for(lambda: sorted(done) == ["1", "2", "3"])


@pytest.mark.parametrize("concurrency", [1, 2])
def test_no_job_is_taken_after_pause_returns(queue, make_worker, concurrency):
    """A lane that decided to fetch before the pause, and is slow to send (a busy
    machine: CI saw it), fetched after pause() had returned and took a job added
    then. pause() now returns once such a fetch has answered."""
    first_done = threading.Event()
    delayed = threading.Event()

    def process(job):
        if job.name == "first":
            first_done.set()
        return job.name

    worker = make_worker("q", process, concurrency=concurrency)
    can_fetch = worker._can_fetch

    def slow_after_the_check() -> bool:
        answer = can_fetch()
        if first_done.is_set() and not delayed.is_set():
            delayed.set()
            time.sleep(1.0)  # the fault: the thread stalls between check and send
        return answer

    worker._can_fetch = slow_after_the_check
    queue.add("first")
    wait_for(delayed.is_set)
    worker.pause()
    later = [queue.add("later").id for _ in range(2)]
    wait_for(lambda: worker._lane_fetches == 0 and worker._reserved == 0)
    wait_for(lambda: queue.get_job_counts("active")["active"] == 0)
    assert queue.get_job_counts("waiting")["waiting"] == 2
    worker.resume()
    wait_for(lambda: all(queue.get_job_state(job_id) == "completed" for job_id in later))


def test_locks_are_renewed_for_jobs_longer_than_the_lock(queue, make_worker, redis_client, prefix):
    release = threading.Event()
    job = queue.add("long")
    make_worker(
        "q",
        lambda job: release.wait(10) and "ok",
        lock_duration=300,
        stalled_interval=200,
    )
    wait_for(lambda: queue.get_job_state(job.id) == "active")
    # several lock durations pass; the stalled check must never take the job
    wait_for(lambda: redis_client.pttl(f"{prefix}:q:{job.id}:lock") > 0)
    deadline_passed = threading.Event()
    threading.Timer(1.0, deadline_passed.set).start()
    while not deadline_passed.is_set():
        assert queue.get_job_state(job.id) == "active"
        assert redis_client.hget(f"{prefix}:q:{job.id}", "stc") is None
        deadline_passed.wait(0.05)
    release.set()
    finished(queue, job.id)


def test_an_async_processor_that_blocks_the_loop_is_named_in_a_warning(
    queue, make_worker, caplog, monkeypatch
):
    import logging

    from flowjobs.engine import loopwatch

    monkeypatch.setattr(loopwatch, "BLOCKED_AFTER_S", 0.2)
    caplog.set_level(logging.WARNING, logger="flowjobs.worker")

    async def blocks(job):
        work_for(0.8)  # the mistake: blocking code in an async processor
        return "done"

    job = queue.add("resize", {})
    make_worker("q", blocks)
    finished(queue, job.id)

    def lines():
        return [r.getMessage() for r in caplog.records if r.name == "flowjobs.worker"]

    wait_for(lambda: any("runs again" in line for line in lines()), message=str(lines()))
    [blocked] = [line for line in lines() if "has blocked" in line]
    assert blocked.startswith(f'the async processor of job {job.id} "resize" of queue q has')
    assert "asyncio.to_thread()" in blocked


def _commands_run(client) -> int:
    """Every command this Redis has run, the ones scripts ran included."""
    return sum(stat["calls"] for stat in client.info("commandstats").values())


def test_finishing_a_plain_job_and_taking_the_next_costs_what_bullmq_s_does(
    queue, make_worker, redis_client
):
    """At concurrency 1 a worker makes one script call per job (finish it, take the
    next); Redis's time in it is what the queue's throughput is made of. Node BullMQ 6's
    moveToFinished runs 25 commands there for a job with no parent, children, group or
    deduplication id; ours ran 29 (each group, child and dedup check its own command, and
    the job's gid, the events cap and the queue's meta read apart), now 21."""
    count = 200
    queue.add_bulk([{"name": "n", "data": {"i": i}} for i in range(count)])
    done = threading.Event()
    completed = []

    def on_completed(job, result):
        completed.append(job.id)
        if len(completed) == count:
            done.set()

    async def noop(job):
        return None

    before = _commands_run(redis_client)
    # autorun=False: a running worker can finish the first jobs before a listener attached
    # after it is there (a flake on a loaded machine: 197 of 200 counted, all 200 done)
    worker = make_worker("q", noop, concurrency=1, autorun=False)
    worker.on("completed", on_completed)
    worker.start()
    assert done.wait(30), f"{len(completed)} of {count} jobs completed"
    per_job = (_commands_run(redis_client) - before) / count
    # 21 in the script, its EVALSHA, and the worker's start-up spread over the jobs
    # (29.4 before; Node: 26 with its EVALSHA)
    assert per_job < 24, f"{per_job:.1f} Redis commands per job"
