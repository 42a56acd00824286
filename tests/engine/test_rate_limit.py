"""Rate limits: worker limiters shared queue-wide, global limits, manual limits, no spinning."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from flowjobs.engine import RateLimitError
from tests.helpers import wait_for

ROOT = Path(__file__).resolve().parents[2]


def processed_times(queue, ids: list[str]) -> list[int]:
    return sorted(queue.get_job(job_id).processed_on for job_id in ids)


def assert_fixed_window_limit(times: list[int], max_jobs: int, window_ms: int) -> None:
    """A fixed-window limiter of `max_jobs` per `window_ms` puts jobs i and i + 2*max_jobs
    at least two windows apart, so more than one window length apart (less a margin for
    the clock that stamped processedOn against Redis's expiry)."""
    step = 2 * max_jobs
    gaps = [times[i + step] - times[i] for i in range(len(times) - step)]
    assert gaps and min(gaps) >= window_ms - 100, gaps


def evalsha_calls(client) -> int:
    stats = client.info("commandstats")
    return stats.get("cmdstat_evalsha", {}).get("calls", 0)


def test_a_limiter_holds_across_two_worker_processes(queue, redis_url, prefix):
    jobs = queue.add_bulk([{"name": "call-api", "data": {"i": i}} for i in range(30)])
    processes = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.engine.rate_limited_worker",
                redis_url,
                prefix,
                "q",
                name,
                "10",
                "1000",
            ],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for name in ("w1", "w2")
    ]
    try:
        for process in processes:
            assert process.stdout.readline().strip() == "ready"
        wait_for(
            lambda: queue.get_job_counts("completed")["completed"] == 30,
            timeout=15,
            message="the 30 jobs were not processed",
        )
    finally:
        for process in processes:
            process.stdin.close()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
    times = processed_times(queue, [job.id for job in jobs])
    assert_fixed_window_limit(times, 10, 1000)
    # 30 jobs at 10 per second need three windows, the first opened by the first job
    assert times[-1] - times[0] >= 1900
    assert {queue.get_job(job.id).processed_by for job in jobs} == {"w1", "w2"}


def test_global_max_wins_over_the_worker_max_and_the_worker_window_wins(queue, make_worker):
    queue.set_global_rate_limit(2, 1000)
    jobs = queue.add_bulk([{"name": "x"} for _ in range(6)])
    make_worker("q", lambda job: None, concurrency=4, limiter={"max": 100, "duration": 500})
    wait_for(lambda: queue.get_job_counts("completed")["completed"] == 6)
    times = processed_times(queue, [job.id for job in jobs])
    assert_fixed_window_limit(times, 2, 500)
    # three windows of the worker's 500 ms, not of the queue's 1000 ms
    assert 900 <= times[-1] - times[0] < 1900


def test_manual_rate_limit_from_a_processor(queue, make_worker):
    attempts = []

    def process(job):
        attempts.append(time.monotonic())
        if len(attempts) == 1:
            queue.rate_limit(800)
            assert queue.get_rate_limit_ttl() > 0
            raise RateLimitError()
        return "done"

    job = queue.add("x")
    make_worker("q", process, limiter={"max": 10, "duration": 1000})
    wait_for(lambda: queue.get_job_state(job.id) == "completed")
    assert attempts[1] - attempts[0] >= 0.7
    stored = queue.get_job(job.id)
    assert stored.attempts_made == 1  # the rate-limited try was not counted
    assert stored.attempts_started == 2


@pytest.mark.parametrize("limiter", [True, False])
def test_a_rate_limited_worker_waits_without_spinning(queue, make_worker, redis_client, limiter):
    """With a limiter, fetches stop at the limit; without one, a RateLimitError still
    holds this worker back for the limiter's ttl."""
    seen = []

    def process(job):
        seen.append(job.id)
        if not limiter:
            queue.rate_limit(1500)
            raise RateLimitError()

    queue.add_bulk([{"name": "x"} for _ in range(3)])
    options = {"limiter": {"max": 1, "duration": 1500}} if limiter else {}
    make_worker("q", process, **options)
    wait_for(lambda: len(seen) == 1)
    before = evalsha_calls(redis_client)
    start = time.monotonic()
    wait_for(lambda: time.monotonic() - start > 0.8, interval=0.1)
    assert len(seen) == 1
    assert evalsha_calls(redis_client) - before <= 3
    assert queue.get_rate_limit_ttl(1) > 0


def test_rate_limit_ttl(queue):
    assert queue.get_rate_limit_ttl() == -2  # no limiter key and no maximum: PTTL, as Node
    queue.rate_limit(5_000)
    assert 4_000 < queue.get_rate_limit_ttl() <= 5_000
    queue.set_global_rate_limit(3, 1000)
    assert 4_000 < queue.get_rate_limit_ttl() <= 5_000  # the counter is above meta max
    queue.remove_rate_limit_key()
    assert queue.get_rate_limit_ttl() == 0


@pytest.mark.parametrize("foreign", ["1e3", "lots", "hash"])
def test_a_foreign_value_at_the_limiter_key_does_not_stop_fetches(
    foreign, queue, make_worker, redis_client, prefix
):
    """A count INCRBY would refuse (another client's) at the queue's limiter key failed
    every fetch of a rate-limited worker, after the fetch had begun writing: it is
    dropped, and the window starts anew."""
    key = f"{prefix}:q:limiter"
    if foreign == "hash":
        redis_client.hset(key, "count", 1)
    else:
        redis_client.set(key, foreign)
    queue.add_bulk([{"name": "x"} for _ in range(3)])
    done: list[str] = []
    make_worker("q", lambda job: done.append(job.id), limiter={"max": 10, "duration": 60_000})
    wait_for(lambda: len(done) == 3)
    assert redis_client.get(key) == "3"
