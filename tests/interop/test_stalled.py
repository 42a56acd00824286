"""Stalled jobs: a worker process dies mid-job; the other implementation recovers it.

The `sides` fixture gives (victim side, rescuer side): first a Node worker is
SIGKILLed and a flowjobs worker recovers its job, then the reverse.
"""

from __future__ import annotations

from typing import Any

import redis

Side = Any


def kill_mid_job(victim: Side, queue: str, job_id: str) -> None:
    # No stalled check in the victim: its run would hold the queue's shared
    # stalled-check guard for a whole interval and delay the rescuer's check.
    doomed = victim.worker_process(
        {
            "queue": queue,
            "lockDuration": 1000,
            "skipStalledCheck": True,
            "behaviours": {"*": {"action": "hang"}},
        }
    )
    doomed.expect("process", id=job_id)
    doomed.kill()


def test_job_of_a_killed_worker_is_recovered_by_the_other_side(
    sides: tuple[Side, Side], r: redis.Redis
) -> None:
    victim, rescuer = sides
    job = victim.producer.add(queue="stall", name="fragile", data={"k": "v"})
    kill_mid_job(victim, "stall", job["id"])
    assert rescuer.producer.getJobState(queue="stall", id=job["id"]) == "active"

    events = rescuer.events({"queue": "stall"})
    worker = rescuer.worker(
        {
            "queue": "stall",
            "stalledInterval": 300,
            "maxStalledCount": 1,
            "doneAfter": 1,
            "behaviours": {"*": {"action": "return", "value": "rescued"}},
        }
    )
    worker.expect("stalled", id=job["id"], timeout=30)
    rerun = worker.expect("process", id=job["id"])
    assert rerun["stalledCounter"] == 1
    assert rerun["attemptsStarted"] == 2
    worker.expect("completed", id=job["id"])

    for side in (victim, rescuer):
        stored = side.producer.getJob(queue="stall", id=job["id"])
        assert stored["returnvalue"] == "rescued"
        assert stored["stalledCounter"] == 1
        assert stored["attemptsMade"] == 1
        assert side.producer.getJobState(queue="stall", id=job["id"]) == "completed"
    events.expect_queue_event("completed", jobId=job["id"])
    sequence = [(e["name"], e["fields"].get("prev")) for e in events.queue_events(jobId=job["id"])]
    assert sequence == [
        ("added", None),
        ("waiting", None),
        ("active", "waiting"),
        ("waiting", "active"),
        ("stalled", None),
        ("active", "waiting"),
        ("completed", "active"),
    ]
    assert r.scard(f"{victim.prefix}:stall:stalled") == 0


def test_job_stalled_too_often_fails_with_the_deferred_reason(
    sides: tuple[Side, Side], r: redis.Redis
) -> None:
    victim, rescuer = sides
    job = victim.producer.add(queue="stall-max", name="fragile", opts={"attempts": 3})
    kill_mid_job(victim, "stall-max", job["id"])

    worker = rescuer.worker(
        {"queue": "stall-max", "stalledInterval": 300, "maxStalledCount": 0, "doneAfter": 1}
    )
    worker.expect("stalled", id=job["id"], timeout=30)
    failed = worker.expect("failed", id=job["id"])
    assert failed["failedReason"] == "job stalled more than allowable limit"
    assert failed["final"] is True
    for side in (victim, rescuer):
        stored = side.producer.getJob(queue="stall-max", id=job["id"])
        assert stored["failedReason"] == "job stalled more than allowable limit"
        assert stored["stalledCounter"] == 1
        assert stored["deferredFailure"] is None
        assert side.producer.getJobState(queue="stall-max", id=job["id"]) == "failed"
    assert r.hexists(f"{victim.prefix}:stall-max:{job['id']}", "defa") is False


def test_long_job_with_renewed_lock_is_not_taken_by_the_other_side(
    sides: tuple[Side, Side], r: redis.Redis
) -> None:
    holder, checker = sides
    job = holder.producer.add(queue="long", name="long", data={"l": 1})
    busy = holder.worker(
        {
            "queue": "long",
            "lockDuration": 1000,
            "skipStalledCheck": True,
            "behaviours": {"long": {"action": "echo", "sleepMs": 3000}},
        }
    )
    busy.expect("process", id=job["id"])
    watcher = checker.worker({"queue": "long", "stalledInterval": 200, "maxStalledCount": 0})
    events = checker.events({"queue": "long"})
    busy.expect("completed", id=job["id"], timeout=30)
    assert not watcher.where("stalled")
    assert not watcher.where("process")
    events.expect_queue_event("completed", jobId=job["id"])
    assert not events.queue_events("stalled")
    stored = checker.producer.getJob(queue="long", id=job["id"])
    assert stored["stalledCounter"] == 0
    assert stored["attemptsStarted"] == 1
    assert stored["returnvalue"] == {"l": 1}
