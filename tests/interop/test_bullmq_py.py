"""The official Python port (PyPI `bullmq`, pinned in node.py) against flowjobs.

bullmq-py runs from a scratch virtualenv (the `bullmq_py` fixture creates it
once under ~/.cache/flowjobs-interop); it is never a project dependency.
"""

from __future__ import annotations

import json

import redis

from .flowjobs_side import FlowjobsHarness
from .node import BullmqPyHarness


def test_job_from_bullmq_py_processed_by_flowjobs(
    bullmq_py: BullmqPyHarness, flowjobs: FlowjobsHarness, r: redis.Redis, prefix: str
) -> None:
    added = bullmq_py.producer.add(
        queue="py", name="from-py", data={"list": [1, 2], "s": "ß"}, opts={"attempts": 2}
    )
    failing = bullmq_py.producer.add(queue="py", name="py-fails", opts={"attempts": 1})
    worker = flowjobs.worker(
        {
            "queue": "py",
            "doneAfter": 2,
            "behaviours": {
                "from-py": {"action": "return", "value": {"done": True}},
                "py-fails": {"action": "throw", "message": "flowjobs says no"},
            },
        }
    )
    worker.expect("done")
    assert worker.expect("process", id=added["id"])["data"] == {"list": [1, 2], "s": "ß"}

    seen = bullmq_py.producer.getJob(queue="py", id=added["id"])
    assert seen["returnvalue"] == {"done": True}
    assert seen["attemptsMade"] == 1
    assert bullmq_py.producer.getJobState(queue="py", id=added["id"]) == "completed"
    failed = bullmq_py.producer.getJob(queue="py", id=failing["id"])
    assert failed["failedReason"] == "flowjobs says no"
    assert bullmq_py.producer.getJobState(queue="py", id=failing["id"]) == "failed"
    assert bullmq_py.producer.getJobCounts(queue="py", types=["completed", "failed"]) == {
        "completed": 1,
        "failed": 1,
    }
    assert json.loads(r.hget(f"{prefix}:py:{added['id']}", "returnvalue")) == {"done": True}


def test_job_from_flowjobs_processed_by_bullmq_py(
    bullmq_py: BullmqPyHarness, flowjobs: FlowjobsHarness, r: redis.Redis, prefix: str
) -> None:
    ok = flowjobs.producer.add(queue="py", name="to-py", data={"n": 3})
    bad = flowjobs.producer.add(queue="py", name="py-throws", opts={"attempts": 1})
    worker = bullmq_py.worker(
        {
            "queue": "py",
            "doneAfter": 2,
            "behaviours": {"py-throws": {"action": "throw", "message": "bullmq-py boom"}},
        }
    )
    worker.expect("done", timeout=30)
    assert worker.expect("completed", id=ok["id"])["returnvalue"] == {"n": 3}

    done = flowjobs.producer.getJob(queue="py", id=ok["id"])
    assert done["returnvalue"] == {"n": 3}
    assert done["attemptsMade"] == 1
    assert flowjobs.producer.getJobState(queue="py", id=bad["id"]) == "failed"
    # bullmq-py 2.x stored failedReason JSON-encoded ("\"boom\""); 3.x stores plain text
    # like Node, which is what flowjobs reads and writes.
    raw_reason = r.hget(f"{prefix}:py:{bad['id']}", "failedReason")
    assert raw_reason == "bullmq-py boom"
    assert flowjobs.producer.getJob(queue="py", id=bad["id"])["failedReason"] == raw_reason


FLOW = {
    "name": "parent",
    "queueName": "py-parent",
    "data": {"p": 1},
    "children": [
        {"name": "kid", "queueName": "py-kids", "data": {"k": 1}},
        {"name": "kid", "queueName": "py-kids", "data": {"k": 2}},
    ],
}


def test_flow_from_bullmq_py_processed_by_flowjobs(
    bullmq_py: BullmqPyHarness, flowjobs: FlowjobsHarness, prefix: str
) -> None:
    tree = bullmq_py.producer.flow(flow=FLOW)
    parent = tree["job"]["id"]
    kids = [child["job"]["id"] for child in tree["children"]]
    assert flowjobs.producer.getJobState(queue="py-parent", id=parent) == "waiting-children"
    worker = flowjobs.worker(
        {
            "queues": ["py-kids", "py-parent"],
            "doneAfter": 3,
            "behaviours": {"parent": {"action": "children"}},
        }
    )
    result = worker.expect("completed", id=parent, timeout=30)["returnvalue"]
    expected = {f"{prefix}:py-kids:{kids[0]}": {"k": 1}, f"{prefix}:py-kids:{kids[1]}": {"k": 2}}
    assert result == {"values": expected, "ignored": {}}
    assert bullmq_py.producer.getChildrenValues(queue="py-parent", id=parent) == expected
    assert bullmq_py.producer.getJobState(queue="py-parent", id=parent) == "completed"


def test_flow_from_flowjobs_processed_by_bullmq_py(
    bullmq_py: BullmqPyHarness, flowjobs: FlowjobsHarness, prefix: str
) -> None:
    tree = flowjobs.producer.flow(flow=FLOW)
    parent = tree["job"]["id"]
    kids = [child["job"]["id"] for child in tree["children"]]
    worker = bullmq_py.worker(
        {
            "queues": ["py-kids", "py-parent"],
            "doneAfter": 3,
            "behaviours": {"parent": {"action": "children"}},
        }
    )
    result = worker.expect("completed", id=parent, timeout=30)["returnvalue"]
    expected = {f"{prefix}:py-kids:{kids[0]}": {"k": 1}, f"{prefix}:py-kids:{kids[1]}": {"k": 2}}
    assert result == {"values": expected}
    assert flowjobs.producer.getChildrenValues(queue="py-parent", id=parent) == expected
    assert flowjobs.producer.getJob(queue="py-parent", id=parent)["returnvalue"] == result
