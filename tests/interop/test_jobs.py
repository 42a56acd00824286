"""Single jobs across the two implementations, in both directions.

Each test runs twice through the `sides` fixture: Node.js BullMQ produces and a
flowjobs worker processes, then flowjobs produces and a Node worker processes.
Both sides are read back through both APIs and through raw Redis.
"""

from __future__ import annotations

import json
from typing import Any

import redis

Side = Any

DATA = {"text": 'héllo ✓ "quoted" / slash', "n": 7, "f": 1.5, "list": [1, None, True], "o": {}}
RESULT = {"ok": True, "items": [1, 2, 3], "nested": {"a": None}, "unicode": "ünï"}


def test_plain_job_data_and_json_return_value(sides: tuple[Side, Side], r: redis.Redis) -> None:
    producer, consumer = sides
    added = producer.producer.add(queue="plain", name="echo", data=DATA, opts={"attempts": 1})
    custom = producer.producer.add(
        queue="plain", name="answer", data=[1, "two"], opts={"jobId": "custom-id"}
    )
    assert custom["id"] == "custom-id"
    worker = consumer.worker(
        {
            "queue": "plain",
            "doneAfter": 2,
            "behaviours": {"answer": {"action": "return", "value": RESULT}},
        }
    )
    processed = worker.expect("process", id=added["id"])
    assert processed["data"] == DATA
    assert processed["name"] == "echo"
    assert processed["attemptsMade"] == 0
    assert worker.expect("completed", id=added["id"])["returnvalue"] == DATA
    assert worker.expect("completed", id="custom-id")["returnvalue"] == RESULT
    worker.expect("done")

    for side in (producer, consumer):
        job = side.producer.getJob(queue="plain", id=added["id"])
        assert job["returnvalue"] == DATA
        assert job["data"] == DATA
        assert job["attemptsMade"] == 1
        assert job["attemptsStarted"] == 1
        assert job["finishedOn"] >= job["processedOn"] >= job["timestamp"]
        assert side.producer.getJobState(queue="plain", id=added["id"]) == "completed"
        other = side.producer.getJob(queue="plain", id="custom-id")
        assert other["returnvalue"] == RESULT
        assert other["data"] == [1, "two"]

    raw = r.hgetall(f"{producer.prefix}:plain:{added['id']}")
    assert json.loads(raw["returnvalue"]) == DATA
    assert json.loads(raw["data"]) == DATA
    assert raw["atm"] == "1"
    assert set(r.zrange(f"{producer.prefix}:plain:completed", 0, -1)) == {added["id"], "custom-id"}
    assert r.llen(f"{producer.prefix}:plain:active") == 0
    assert r.exists(f"{producer.prefix}:plain:{added['id']}:lock") == 0


def test_priorities_and_lifo_order(sides: tuple[Side, Side]) -> None:
    producer, consumer = sides
    p = producer.producer
    p.add(queue="order", name="fifo-1")
    p.add(queue="order", name="prio-3a", opts={"priority": 3})
    p.add(queue="order", name="prio-1", opts={"priority": 1})
    p.add(queue="order", name="fifo-2")
    p.add(queue="order", name="lifo", opts={"lifo": True})
    p.add(queue="order", name="prio-3b", opts={"priority": 3})
    p.addBulk(
        queue="order",
        jobs=[{"name": "bulk-prio-2", "opts": {"priority": 2}}, {"name": "bulk-fifo-3"}],
    )
    counts = consumer.producer.getJobCounts(queue="order", types=["waiting", "prioritized"])
    assert counts == {"waiting": 4, "prioritized": 4}

    worker = consumer.worker({"queue": "order", "doneAfter": 8, "concurrency": 1})
    worker.expect("done")
    order = [line["name"] for line in worker.where("process")]
    assert order == [
        "lifo",
        "fifo-1",
        "fifo-2",
        "bulk-fifo-3",
        "prio-1",
        "bulk-prio-2",
        "prio-3a",
        "prio-3b",
    ]


def test_delayed_job_runs_after_its_delay(sides: tuple[Side, Side], r: redis.Redis) -> None:
    producer, consumer = sides
    job = producer.producer.add(
        queue="later", name="wait-for-it", data={"d": 1}, opts={"delay": 1200}
    )
    assert consumer.producer.getJobState(queue="later", id=job["id"]) == "delayed"
    score = r.zscore(f"{producer.prefix}:later:delayed", job["id"])
    assert int(score) // 4096 == job["timestamp"] + 1200
    marker = r.zscore(f"{producer.prefix}:later:marker", "1")
    assert marker is not None and int(marker) == job["timestamp"] + 1200

    worker = consumer.worker({"queue": "later", "doneAfter": 1})
    processed = worker.expect("process", id=job["id"], timeout=30)
    assert processed["at"] >= job["timestamp"] + 1200
    worker.expect("completed", id=job["id"])
    stored = producer.producer.getJob(queue="later", id=job["id"])
    assert stored["processedOn"] >= job["timestamp"] + 1200
    assert stored["delay"] == 0  # reset when the job was promoted
    assert stored["returnvalue"] == {"d": 1}


def test_retries_with_backoff_then_final_failure(sides: tuple[Side, Side], r: redis.Redis) -> None:
    producer, consumer = sides
    job = producer.producer.add(
        queue="flaky",
        name="always-fails",
        data={"x": 1},
        opts={"attempts": 3, "backoff": {"type": "exponential", "delay": 200}},
    )
    recovers = producer.producer.add(
        queue="flaky",
        name="fails-once",
        opts={"attempts": 2, "backoff": 100},
    )
    worker = consumer.worker(
        {
            "queue": "flaky",
            "doneAfter": 2,
            "behaviours": {
                "always-fails": {"action": "throw", "message": "boom: bad input"},
                "fails-once": [
                    {"action": "throw", "message": "first"},
                    {"action": "return", "value": 42},
                ],
            },
        }
    )
    worker.expect("done", timeout=30)
    runs = worker.where("process", id=job["id"])
    assert [run["attemptsMade"] for run in runs] == [0, 1, 2]
    # exponential: 200 ms then 400 ms between the attempts
    assert runs[1]["at"] - runs[0]["at"] >= 200
    assert runs[2]["at"] - runs[1]["at"] >= 400
    assert worker.expect("completed", id=recovers["id"])["returnvalue"] == 42

    for side in (producer, consumer):
        failed = side.producer.getJob(queue="flaky", id=job["id"])
        assert failed["failedReason"] == "boom: bad input"
        assert failed["attemptsMade"] == 3
        assert len(failed["stacktrace"]) == 3
        assert "boom: bad input" in failed["stacktrace"][-1]
        assert side.producer.getJobState(queue="flaky", id=job["id"]) == "failed"
        done = side.producer.getJob(queue="flaky", id=recovers["id"])
        assert done["returnvalue"] == 42
        assert done["attemptsMade"] == 2
        assert done["failedReason"] == "first"
    raw = r.hget(f"{producer.prefix}:flaky:{job['id']}", "failedReason")
    assert raw == "boom: bad input"  # plain text, not JSON


def test_unrecoverable_error_stops_retries(sides: tuple[Side, Side]) -> None:
    producer, consumer = sides
    job = producer.producer.add(queue="fatal", name="give-up", opts={"attempts": 5, "backoff": 100})
    worker = consumer.worker(
        {
            "queue": "fatal",
            "doneAfter": 1,
            "behaviours": {"give-up": {"action": "unrecoverable", "message": "no way"}},
        }
    )
    worker.expect("done")
    assert len(worker.where("process", id=job["id"])) == 1
    for side in (producer, consumer):
        stored = side.producer.getJob(queue="fatal", id=job["id"])
        assert stored["failedReason"] == "no way"
        assert stored["attemptsMade"] == 1
        assert side.producer.getJobState(queue="fatal", id=job["id"]) == "failed"


def test_processor_moves_job_to_delayed(sides: tuple[Side, Side]) -> None:
    producer, consumer = sides
    job = producer.producer.add(queue="snooze", name="snooze", data={"s": 1})
    worker = consumer.worker(
        {
            "queue": "snooze",
            "doneAfter": 1,
            "behaviours": {"snooze": [{"action": "delay", "delayMs": 500}, {"action": "echo"}]},
        }
    )
    worker.expect("done")
    runs = worker.where("process", id=job["id"])
    assert len(runs) == 2
    assert runs[1]["at"] - runs[0]["at"] >= 500
    assert runs[1]["attemptsMade"] == 0  # DelayedError does not count an attempt
    stored = producer.producer.getJob(queue="snooze", id=job["id"])
    assert stored["attemptsMade"] == 1
    assert stored["attemptsStarted"] == 2
    assert stored["returnvalue"] == {"s": 1}
