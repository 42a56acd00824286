"""BullMQ 6 conformance (issue 16), checked against the real npm bullmq.

Each test runs the same commands on both sides (Node's producer.cjs and the flowjobs
engine) against the same Redis and asserts both answer, and leave Redis, alike. Items
that exist only inside a worker process in Node (cancelJob, locksRenewed, the events of
a running worker) are covered in tests/engine/test_conformance.py and test_cancel.py.
"""

from __future__ import annotations

from typing import Any

import pytest
import redis

Side = Any


@pytest.fixture(params=["node", "flowjobs"])
def side(request: pytest.FixtureRequest, node: Side, flowjobs: Side) -> Side:
    return node if request.param == "node" else flowjobs


def test_get_jobs_backfills_pages_past_missing_hashes(node: Side, flowjobs: Side, r) -> None:
    """Item 5: ids whose hash is gone are skipped and the page is filled from the range."""
    ids = [node.producer.add(queue="gj", name=f"j{i}")["id"] for i in range(6)]
    r.delete(f"{node.prefix}:gj:{ids[0]}", f"{node.prefix}:gj:{ids[2]}")
    for asc in (True, False):
        pages = [
            [
                job["id"]
                for job in s.producer.getJobs(queue="gj", types=["wait"], start=0, end=2, asc=asc)
            ]
            for s in (node, flowjobs)
        ]
        assert pages[0] == pages[1]
        assert len(pages[0]) == 3


def test_drain_keeps_the_priority_counter(side: Side, r: redis.Redis) -> None:
    """Item 6."""
    for _ in range(2):
        side.producer.add(queue="dr", name="p", opts={"priority": 4})
    counter = r.get(f"{side.prefix}:dr:pc")
    assert counter == "2"
    side.producer.drain(queue="dr")
    assert side.producer.getJobCounts(queue="dr", types=["prioritized"]) == {"prioritized": 0}
    assert r.get(f"{side.prefix}:dr:pc") == counter


def test_scheduler_end_date_past_and_count_limit(side: Side) -> None:
    """Items 7 and 14: an end date past is refused (Node 6.7's Queue throws; its
    JobScheduler would return nothing); no iteration (null) once count reached limit."""
    p = side.producer
    with pytest.raises(Exception, match="(?i)end.?date"):
        p.upsertJobScheduler(queue="sc", id="old", repeat={"every": 1_000, "endDate": 1_000})
    assert (
        p.upsertJobScheduler(
            queue="sc", id="done", repeat={"every": 60_000, "limit": 3, "count": 3}
        )
        is None
    )
    assert p.getJobScheduler(queue="sc", id="old") is None
    assert p.getJobScheduler(queue="sc", id="done") is None
    job = p.upsertJobScheduler(
        queue="sc", id="last", repeat={"every": 60_000, "limit": 3, "count": 2}
    )
    assert job["opts"]["repeat"]["count"] == 3
    assert job["opts"]["repeat"]["limit"] == 3


def test_a_closed_flow_producer_writes_nothing(side: Side, r: redis.Redis) -> None:
    """Item 8."""
    flow = {"name": "root", "queueName": "fl", "children": [{"name": "c", "queueName": "fl"}]}
    assert side.producer.flowAfterClose(flow=flow) is None
    assert r.keys(f"{side.prefix}:fl:*") == []


def test_rate_limit_ttl_and_removal_counts(side: Side) -> None:
    """Item 9: PTTL (-2) without a maximum; the removers return how much they removed."""
    p = side.producer
    assert p.getRateLimitTtl(queue="rl") == -2
    p.rateLimit(queue="rl", ms=5_000)
    assert 4_000 < p.getRateLimitTtl(queue="rl") <= 5_000
    assert p.removeRateLimitKey(queue="rl") == 1
    assert p.removeRateLimitKey(queue="rl") == 0
    assert p.getRateLimitTtl(queue="rl") == -2
    p.setGlobalConcurrency(queue="rl", concurrency=3)
    assert p.removeGlobalConcurrency(queue="rl") == 1
    assert p.removeGlobalConcurrency(queue="rl") == 0
    p.setGlobalRateLimit(queue="rl", max=5, duration=1_000)
    assert p.getRateLimitTtl(queue="rl") == 0  # a maximum, and the limiter is not full
    assert p.removeGlobalRateLimit(queue="rl") == 2
    assert p.removeGlobalRateLimit(queue="rl") == 0


def test_counts_per_priority_agree(node: Side, flowjobs: Side) -> None:
    """Item 11: the same queue counted by both."""
    for priority in (0, 0, 1, 3, 3, 3):
        opts = {"priority": priority} if priority else {}
        node.producer.add(queue="cp", name="x", opts=opts)
    flowjobs.producer.add(queue="cp", name="y", opts={"priority": 1})
    expected = {"0": 2, "1": 2, "3": 3, "9": 0}
    for s in (node, flowjobs):
        assert s.producer.getCountsPerPriority(queue="cp", priorities=[0, 1, 3, 9, 3]) == expected


@pytest.mark.parametrize("direction", ["flowjobs->node", "node->flowjobs"])
def test_custom_events_reach_the_other_sides_queue_events(
    direction: str, node: Side, flowjobs: Side
) -> None:
    """Item 12: a QueueEventsProducer's event, received by the other side's QueueEvents."""
    publisher, listener_side = (
        (flowjobs, node) if direction == "flowjobs->node" else (node, flowjobs)
    )
    listener = listener_side.events({"queue": "ev", "lastEventId": "0"})
    publisher.producer.publishEvent(
        queue="ev", eventName="invoice-sent", fields={"invoice": "F-7", "total": 12}
    )
    line = listener.expect_queue_event("invoice-sent", timeout=15)
    assert line["fields"]["invoice"] == "F-7"
    assert str(line["fields"]["total"]) == "12"


def test_manual_moves_update_the_job_and_fetch_next(side: Side, r: redis.Redis) -> None:
    """Items 2, 3 and 4: the local Job after a manual move, getNextJob's active event,
    and a retry with backoff that hands back the next job."""
    p = side.producer
    first = p.add(queue="mf", name="a")["id"]
    done = p.manualFinish(queue="mf", outcome="completed", value={"ok": 1})
    assert done["id"] == first
    assert done["attemptsMade"] == 1 and done["returnvalue"] == {"ok": 1}
    assert done["finishedOn"] == int(r.hget(f"{side.prefix}:mf:{first}", "finishedOn"))
    assert done["active"] == [[first, "waiting"]]

    retried = p.add(queue="mf", name="b", opts={"attempts": 3, "backoff": 60_000})["id"]
    following = p.add(queue="mf", name="c")["id"]
    failed = p.manualFinish(queue="mf", outcome="failed", value="again", fetchNext=True)
    assert failed["id"] == retried
    assert failed["attemptsMade"] == 1 and failed["failedReason"] == "again"
    assert failed["finishedOn"] is None  # a retry: not finished
    assert failed["next"] == following
    assert p.getJobState(queue="mf", id=retried) == "delayed"
    assert p.getJobState(queue="mf", id=following) == "active"


def test_worker_events_see_the_job_as_redis_holds_it(sides: tuple[Side, Side]) -> None:
    """Item 1: completed/failed listeners get the job after the move (attempts made,
    finished or not), on both sides' workers."""
    producer, consumer = sides
    ok = producer.producer.add(queue="we", name="ok")["id"]
    bad = producer.producer.add(queue="we", name="bad", opts={"attempts": 2})["id"]
    worker = consumer.worker(
        {
            "queue": "we",
            "concurrency": 1,
            "doneAfter": 2,
            "behaviours": {
                "ok": {"action": "return", "value": 7},
                "bad": {"action": "throw", "message": "nope"},
            },
        }
    )
    worker.expect("done", timeout=30)
    assert worker.expect("completed", id=ok)["attemptsMade"] == 1
    failures = worker.where("failed", id=bad)
    assert [(f["attemptsMade"], f["final"]) for f in failures] == [(1, False), (2, True)]
