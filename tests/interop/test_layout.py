"""The raw Redis layout: the same operations leave the same keys behind.

Node.js BullMQ runs a scenario on one queue and flowjobs runs it on another;
every key of the two queues is then compared: types, hash fields, list and
set contents, zset members, stream entries. Only what legitimately differs is
normalised: timestamps, the key order inside `opts` (written by each client,
re-encoded by Lua's cjson in BullMQ), stack trace text, and the queue name.
"""

from __future__ import annotations

import json
import re
from typing import Any

import redis

from tests.helpers import wait_for

from .flowjobs_side import FlowjobsHarness
from .node import NodeHarness

TIMESTAMP = re.compile(r"\b1\d{12}\b")
BEHAVIOURS = {
    "a": [{"action": "throw", "message": "once"}, {"action": "echo", "log": "L", "progress": 7}],
    "e": {"action": "throw", "message": "bad e"},
    "k": {"action": "throw", "message": "kid boom"},
}


def add_jobs(side: NodeHarness | FlowjobsHarness, queue: str) -> None:
    p = side.producer
    p.add(
        queue=queue,
        name="a",
        data={"x": 1},
        opts={
            "attempts": 3,
            "backoff": {"type": "exponential", "delay": 100},
            "removeOnComplete": {"count": 10},
            "keepLogs": 5,
            "stackTraceLimit": 3,
        },
    )
    p.add(queue=queue, name="b", opts={"priority": 5})
    p.add(queue=queue, name="c", opts={"delay": 60_000})
    p.add(queue=queue, name="d", opts={"lifo": True})
    p.add(queue=queue, name="e", opts={"jobId": "custom-e", "removeOnFail": True})
    p.flow(
        flow={
            "name": "p",
            "queueName": queue,
            "opts": {"jobId": "par"},
            "children": [
                {
                    "name": "k",
                    "queueName": queue,
                    "opts": {"jobId": "kid", "failParentOnFailure": True},
                }
            ],
        }
    )


def change_jobs(side: NodeHarness | FlowjobsHarness, queue: str) -> None:
    p = side.producer
    p.changePriority(queue=queue, id="2", priority=2)
    p.changePriority(queue=queue, id="4", priority=7)  # from wait to prioritized
    p.changeDelay(queue=queue, id="3", delay=120_000)
    p.updateData(queue=queue, id="1", data={"x": 2, "more": ["y"]})
    assert p.log(queue=queue, id="1", line="first") == 1
    p.updateProgress(queue=queue, id="1", progress=0)


def process_all(side: NodeHarness | FlowjobsHarness, queue: str) -> None:
    side.producer.promote(queue=queue, id="3")
    worker = side.worker({"queue": queue, "concurrency": 1, "behaviours": BEHAVIOURS})
    for outcome, job_id in (("completed", "1"), ("failed", "par"), ("completed", "3")):
        worker.expect(outcome, id=job_id)


def normalise(value: Any, queue: str) -> Any:
    """Timestamps (numbers or text) become "<ms>", the queue name "<queue>"."""
    if isinstance(value, dict):
        return {normalise(k, queue): normalise(v, queue) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [normalise(item, queue) for item in value]
    if isinstance(value, int | float) and not isinstance(value, bool):
        return "<ms>" if TIMESTAMP.fullmatch(str(int(value))) else value
    if isinstance(value, str):
        value = value.replace(f":{queue}:", ":<queue>:").replace(f":{queue}", ":<queue>")
        return TIMESTAMP.sub("<ms>", value)
    return value


def snapshot(r: redis.Redis, prefix: str, queue: str) -> dict[str, Any]:
    base = f"{prefix}:{queue}:"
    out: dict[str, Any] = {}
    for key in r.scan_iter(match=base + "*", count=1000):
        suffix, kind = key[len(base) :], r.type(key)
        if kind == "hash":
            fields = r.hgetall(key)
            if "opts" in fields:
                fields["opts"] = json.loads(fields["opts"])
            if "stacktrace" in fields:
                fields["stacktrace"] = len(json.loads(fields["stacktrace"]))
            if suffix == "meta":
                fields.pop("version", None)  # only Node's Queue writes bullmq:<version>
            value: Any = fields
        elif kind == "list":
            value = r.lrange(key, 0, -1)
        elif kind == "set":
            value = sorted(r.smembers(key))
        elif kind == "zset":
            pairs = r.zrange(key, 0, -1, withscores=True)
            if suffix == "delayed":  # due*4096 + sequence: keep the sequence
                value = sorted((member, int(score) % 4096) for member, score in pairs)
            else:
                value = sorted((member, int(score)) for member, score in pairs)
        elif kind == "stream":
            by_job: dict[str, list[dict[str, str]]] = {}
            for _, fields in r.xrange(key):
                by_job.setdefault(fields.get("jobId", "-"), []).append(fields)
            by_job.pop("-", None)  # `drained` entries depend on timing
            value = by_job
        else:
            value = r.get(key)
        out[suffix] = normalise([kind, value], queue)
    return out


def test_same_operations_leave_the_same_keys(
    node: NodeHarness, flowjobs: FlowjobsHarness, r: redis.Redis, prefix: str
) -> None:
    add_jobs(node, "lay-node")
    add_jobs(flowjobs, "lay-flowjobs")
    added_node, added_flowjobs = (
        snapshot(r, prefix, "lay-node"),
        snapshot(r, prefix, "lay-flowjobs"),
    )
    assert sorted(added_flowjobs) == sorted(added_node)
    for key in added_node:
        assert added_flowjobs[key] == added_node[key], key

    change_jobs(node, "lay-node")
    change_jobs(flowjobs, "lay-flowjobs")
    changed_node = snapshot(r, prefix, "lay-node")
    changed_flowjobs = snapshot(r, prefix, "lay-flowjobs")
    for key in changed_node:
        assert changed_flowjobs.get(key) == changed_node[key], key
    assert sorted(changed_flowjobs) == sorted(changed_node)

    process_all(node, "lay-node")
    process_all(flowjobs, "lay-flowjobs")
    # Markers are wake-up signals: a worker that fetched its jobs without
    # blocking pops the leftover marker only when it goes idle, so wait for
    # both workers to rest before comparing.
    for queue in ("lay-node", "lay-flowjobs"):
        wait_for(lambda q=queue: not r.exists(f"{prefix}:{q}:marker"), timeout=10)
    done_node, done_flowjobs = snapshot(r, prefix, "lay-node"), snapshot(r, prefix, "lay-flowjobs")
    assert sorted(done_flowjobs) == sorted(done_node)
    for key in done_node:
        assert done_flowjobs[key] == done_node[key], key
    assert "custom-e" not in done_node  # removeOnFail: true
    assert done_node["par"][1]["failedReason"] == f"child {prefix}:<queue>:kid failed"
