"""Stalled jobs: a worker killed mid-job loses nothing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from tests.helpers import wait_for

ROOT = Path(__file__).resolve().parents[2]


def start_stalling_worker(redis_url: str, prefix: str, queue_name: str) -> subprocess.Popen:
    return subprocess.Popen(
        [
            sys.executable,
            str(Path(__file__).with_name("stalling_worker.py")),
            redis_url,
            prefix,
            queue_name,
        ],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


def test_job_of_a_killed_worker_is_recovered_and_completed(
    queue, make_worker, redis_url, prefix, redis_client
):
    job = queue.add("work", {"n": 1})
    victim = start_stalling_worker(redis_url, prefix, "q")
    try:
        assert victim.stdout.readline().strip() == f"started {job.id}"
        victim.send_signal(signal.SIGKILL)
        victim.wait(5)
    finally:
        victim.kill()
    assert queue.get_job_state(job.id) == "active"
    stalled = []
    worker = make_worker(
        "q",
        lambda job: f"recovered {job.data['n']}",
        stalled_interval=300,
        lock_duration=500,
        autorun=False,
    )
    worker.on("stalled", stalled.append)
    worker.start()
    wait_for(lambda: queue.get_job_state(job.id) == "completed", timeout=15)
    recovered = queue.get_job(job.id)
    assert recovered.returnvalue == "recovered 1"
    assert recovered.stalled_counter == 1
    assert recovered.attempts_started == 2
    assert stalled == [job.id]
    events = [f["event"] for _, f in redis_client.xrange(f"{prefix}:q:events")]
    assert "stalled" in events


def test_job_stalling_more_than_allowed_fails_with_a_clear_reason(
    queue, make_worker, redis_url, prefix
):
    job = queue.add("work")
    for _ in range(2):
        victim = start_stalling_worker(redis_url, prefix, "q")
        try:
            assert victim.stdout.readline().strip() == f"started {job.id}"
            victim.send_signal(signal.SIGKILL)
            victim.wait(5)
        finally:
            victim.kill()
        wait_for(
            lambda: queue.check_stalled(1, 1) != [] or False,
            timeout=10,
            message="the stalled check never moved the job",
        )
    processed = []
    make_worker("q", lambda job: processed.append(job.id), stalled_interval=60_000)
    wait_for(lambda: queue.get_job_state(job.id) == "failed")
    failed = queue.get_job(job.id)
    assert failed.failed_reason == "job stalled more than allowable limit"
    assert failed.stalled_counter == 2
    assert processed == []


def test_only_one_stalled_check_runs_per_interval(queue):
    assert queue.check_stalled(1, 60_000) == []
    queue.client.lpush(queue.keys.key("active"), "ghost")
    queue.client.hset(queue.keys.job("ghost"), mapping={"name": "g", "data": "{}", "opts": "{}"})
    # guarded: a second run inside the interval does nothing
    assert queue.check_stalled(1, 60_000) == []
    queue.client.delete(queue.keys.key("stalled-check"))
    assert queue.check_stalled(1, 60_000) == []  # first sighting: candidate only
    queue.client.delete(queue.keys.key("stalled-check"))
    assert queue.check_stalled(1, 60_000) == ["ghost"]
    assert queue.get_job_state("ghost") == "waiting"
