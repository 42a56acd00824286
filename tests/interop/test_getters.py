"""Counts and getters: both APIs describe the same queue the same way.

The producer side fills a queue with jobs in every state (completed, failed,
active, delayed, prioritized, waiting, waiting-children) with the help of a
worker of the other side; then getJobCounts, getJobs (every state, both
orders, pages), getJob and getJobState must agree between Node and flowjobs.
"""

from __future__ import annotations

from typing import Any

Side = Any
STATES = ["active", "completed", "delayed", "failed", "prioritized", "waiting", "waiting-children"]
COMPARED_FIELDS = [
    "id",
    "name",
    "data",
    "opts",
    "timestamp",
    "delay",
    "priority",
    "attemptsMade",
    "attemptsStarted",
    "stalledCounter",
    "processedOn",
    "finishedOn",
    "returnvalue",
    "failedReason",
    "parentKey",
    "parent",
]


def view(job: dict[str, Any]) -> dict[str, Any]:
    return {field: job.get(field) for field in COMPARED_FIELDS}


def fill_every_state(producer: Side, consumer: Side) -> dict[str, str]:
    p = producer.producer
    ids = {
        "c1": p.add(queue="mix", name="c1", data={"n": 1})["id"],
        "c2": p.add(queue="mix", name="c2", data={"n": 2}, opts={"attempts": 2})["id"],
        "f1": p.add(queue="mix", name="f1", opts={"attempts": 1, "removeOnComplete": 5})["id"],
        "h1": p.add(queue="mix", name="h1")["id"],
    }
    worker = consumer.worker(
        {
            "queue": "mix",
            "concurrency": 1,
            "behaviours": {
                "c1": {"action": "return", "value": [1]},
                "f1": {"action": "throw", "message": "f1 failed"},
                "h1": {"action": "hang"},
            },
        }
    )
    worker.expect("process", id=ids["h1"])  # FIFO: c1, c2 and f1 are finished by now
    ids["d1"] = p.add(queue="mix", name="d1", opts={"delay": 60_000})["id"]
    ids["p1"] = p.add(queue="mix", name="p1", opts={"priority": 5})["id"]
    ids["p2"] = p.add(queue="mix", name="p2", opts={"priority": 1, "jobId": "prio-two"})["id"]
    ids["w1"] = p.add(queue="mix", name="w1", data=["a"])["id"]
    ids["w2"] = p.add(queue="mix", name="w2", opts={"lifo": True})["id"]
    tree = p.flow(
        flow={
            "name": "parent",
            "queueName": "mix",
            "data": {"p": True},
            "children": [{"name": "kid", "queueName": "mix-kids", "data": {"k": 1}}],
        }
    )
    ids["parent"] = tree["job"]["id"]
    return ids


def test_counts_and_getters_agree(sides: tuple[Side, Side]) -> None:
    producer, consumer = sides
    ids = fill_every_state(producer, consumer)
    expected_counts = {
        "active": 1,
        "completed": 2,
        "delayed": 1,
        "failed": 1,
        "prioritized": 2,
        "waiting": 2,
        "waiting-children": 1,
    }
    node_side, flowjobs_side = (
        (producer, consumer) if producer.side == "node" else (consumer, producer)
    )
    n, f = node_side.producer, flowjobs_side.producer
    assert n.getJobCounts(queue="mix") == expected_counts
    assert f.getJobCounts(queue="mix") == expected_counts
    assert f.getJobCounts(queue="mix", types=["waiting", "failed"]) == n.getJobCounts(
        queue="mix", types=["waiting", "failed"]
    )

    for state in STATES:
        for asc in (False, True):
            node_jobs = n.getJobs(queue="mix", types=[state], asc=asc)
            flowjobs_jobs = f.getJobs(queue="mix", types=[state], asc=asc)
            assert [view(j) for j in flowjobs_jobs] == [view(j) for j in node_jobs], (state, asc)
            assert len(node_jobs) == expected_counts[state]
    several = ["waiting", "prioritized", "delayed"]
    for window in ({"start": 0, "end": 0}, {"start": 1, "end": 2}, {"start": 0, "end": -1}):
        node_ids = [j["id"] for j in n.getJobs(queue="mix", types=several, **window)]
        flowjobs_ids = [j["id"] for j in f.getJobs(queue="mix", types=several, **window)]
        assert flowjobs_ids == node_ids, window
    assert [j["id"] for j in n.getJobs(queue="mix", types=["waiting"])] == [ids["w1"], ids["w2"]]

    for name, job_id in ids.items():
        assert f.getJobState(queue="mix", id=job_id) == n.getJobState(queue="mix", id=job_id), name
        assert view(f.getJob(queue="mix", id=job_id)) == view(n.getJob(queue="mix", id=job_id)), (
            name
        )
    assert n.getJobState(queue="mix", id="no-such-job") == "unknown"
    assert f.getJobState(queue="mix", id="no-such-job") == "unknown"
    assert f.getJob(queue="mix", id="no-such-job") is None
    assert n.getJob(queue="mix", id="no-such-job") is None
