"""Pause and resume (BullMQ 6 semantics: a paused queue keeps its jobs in `wait`).

The producer side pauses the queue, adds jobs and resumes it; a worker of the
other implementation, running the whole time, must honour both.
"""

from __future__ import annotations

import time
from typing import Any

import redis

Side = Any


def stays(predicate: Any, seconds: float) -> bool:
    """True if `predicate()` holds on every check during `seconds` (an observation
    window for something that must NOT happen, not a synchronisation)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not predicate():
            return False
        time.sleep(0.05)
    return predicate()


def test_paused_queue_holds_jobs_until_resumed(sides: tuple[Side, Side], r: redis.Redis) -> None:
    controller, consumer = sides
    base = f"{controller.prefix}:gate"
    controller.producer.add(queue="gate", name="before-pause")
    worker = consumer.worker({"queue": "gate", "doneAfter": 3})
    worker.expect("completed", name="before-pause")

    controller.producer.pause(queue="gate")
    assert consumer.producer.isPaused(queue="gate") is True
    assert r.hget(f"{base}:meta", "paused") == "1"
    assert r.exists(f"{base}:marker") == 0

    plain = controller.producer.add(queue="gate", name="plain")
    urgent = controller.producer.add(queue="gate", name="urgent", opts={"priority": 1})
    assert r.lrange(f"{base}:wait", 0, -1) == [plain["id"]]  # 6.x: no `paused` list
    assert r.exists(f"{base}:paused") == 0
    assert r.zrange(f"{base}:prioritized", 0, -1) == [urgent["id"]]
    assert r.exists(f"{base}:marker") == 0
    for side in (controller, consumer):
        assert side.producer.getJobCounts(queue="gate", types=["waiting", "prioritized"]) == {
            "waiting": 1,
            "prioritized": 1,
        }
        assert side.producer.getJobState(queue="gate", id=plain["id"]) == "waiting"
    assert stays(lambda: not worker.where("process", id=plain["id"]), 1.0)
    assert stays(lambda: not worker.where("process", id=urgent["id"]), 0.1)

    controller.producer.resume(queue="gate")
    assert consumer.producer.isPaused(queue="gate") is False
    worker.expect("done", timeout=30)
    assert [line["name"] for line in worker.where("process")] == ["before-pause", "plain", "urgent"]
    assert r.hexists(f"{base}:meta", "paused") is False
    names = [fields["event"] for _, fields in r.xrange(f"{base}:events")]
    assert names.count("paused") == 1
    assert names.count("resumed") == 1
    assert names.index("paused") < names.index("resumed")
