"""A job scheduler paused by flowjobs (admin or `pause_job_scheduler`) with Node.js
BullMQ on the same queue: Node reads it as before, its workers make no run of it,
and Node's own upsert of the scheduler resumes it (the upsert rewrites the hash)."""

from __future__ import annotations

import redis

from .flowjobs_side import FlowjobsHarness
from .node import NodeHarness
from .test_schedulers import pending


def test_node_makes_no_run_of_a_paused_scheduler_and_its_upsert_resumes_it(
    node: NodeHarness, flowjobs: FlowjobsHarness, r: redis.Redis
) -> None:
    queue = flowjobs.producer.queue("ps")
    queue.upsert_job_scheduler("tick", every=200, template={"name": "tick"})
    assert queue.pause_job_scheduler("tick") is True
    assert pending(r, node.prefix, "ps") == []
    seen = node.producer.getJobScheduler(queue="ps", id="tick")
    assert seen["key"] == "tick" and seen["every"] == 200

    worker = node.worker({"queue": "ps"})
    marker = node.producer.add(queue="ps", name="marker")
    worker.expect("completed", id=marker["id"])
    assert [line["id"] for line in worker.where("process")] == [marker["id"]]
    assert pending(r, node.prefix, "ps") == []  # nothing produced a run while paused

    node.producer.upsertJobScheduler(
        queue="ps", id="tick", repeat={"every": 200}, template={"name": "tick"}
    )
    assert queue.get_job_scheduler("tick").paused is False
    ticks = worker.expect_count("completed", 2, timeout=30, name="tick")
    assert all(line["id"].startswith("repeat:tick:") for line in ticks)
