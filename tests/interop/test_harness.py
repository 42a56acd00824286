"""The harness itself, with no Python engine: Node produces, Node consumes, on our Redis."""

from __future__ import annotations

import pytest
import redis

from .node import CommandFailed, NodeHarness


def test_node_producer_and_worker_share_the_private_redis(
    node: NodeHarness, r: redis.Redis, prefix: str
) -> None:
    added = node.producer.add(queue="sanity", name="hello", data={"n": 1}, opts={"attempts": 2})
    assert added["id"] == "1"
    assert r.hget(f"{prefix}:sanity:1", "name") == "hello"
    assert r.lrange(f"{prefix}:sanity:wait", 0, -1) == ["1"]

    events = node.events({"queue": "sanity", "until": "completed", "timeoutMs": 20_000})
    worker = node.worker({"queue": "sanity", "doneAfter": 1})
    completed = worker.expect("completed", id="1")
    assert completed["returnvalue"] == {"n": 1}
    assert worker.expect("process", id="1")["data"] == {"n": 1}
    assert worker.wait_exit() == 0

    names = [line["name"] for line in events.expect_count("queue-event", 4)]
    assert names[:4] == ["added", "waiting", "active", "completed"]

    job = node.producer.getJob(queue="sanity", id="1")
    assert job["returnvalue"] == {"n": 1}
    assert job["attemptsMade"] == 1
    assert node.producer.getJobState(queue="sanity", id="1") == "completed"
    assert r.zrange(f"{prefix}:sanity:completed", 0, -1) == ["1"]


def test_node_worker_exits_mid_job_and_can_be_killed(node: NodeHarness, r: redis.Redis) -> None:
    node.producer.addBulk(
        queue="crash", jobs=[{"name": "exit", "data": {}}, {"name": "hang", "data": {}}]
    )
    # The job is already waiting, so this worker may take it and exit before
    # it prints "ready": do not wait for that line.
    exiting = node.worker(
        {"queue": "crash", "behaviours": {"exit": {"action": "exit", "code": 7}}},
        wait_ready=False,
    )
    exiting.expect("process", id="1")
    assert exiting.wait_exit() == 7
    assert node.producer.getJobState(queue="crash", id="1") == "active"

    hanging = node.worker({"queue": "crash", "behaviours": {"hang": {"action": "hang"}}})
    hanging.expect("process", id="2")
    hanging.kill()
    assert not hanging.alive
    assert node.producer.getJobCounts(queue="crash", types=["active"]) == {"active": 2}


def test_producer_reports_failures(node: NodeHarness) -> None:
    with pytest.raises(CommandFailed) as failure:
        node.producer.add(queue="bad:name", name="x")
    assert failure.value.cmd == "add"
    assert node.producer.ping() == "pong"
