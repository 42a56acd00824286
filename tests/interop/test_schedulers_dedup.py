"""Job schedulers and deduplication across the two implementations, both directions."""

from __future__ import annotations

from typing import Any

import redis

Side = Any


def test_a_scheduler_made_on_one_side_is_continued_by_the_other(
    sides: tuple[Side, Side], r: redis.Redis
) -> None:
    author, runner = sides
    author.producer.upsertJobScheduler(
        queue="ticks", id="tick", repeat={"every": 300}, template={"name": "tick", "data": {"n": 1}}
    )
    worker = runner.worker({"queue": "ticks"})
    done = worker.expect_count("completed", 3, timeout=30)
    ids = [line["id"] for line in done[:3]]
    # each run is the scheduler's own iteration job, produced by whichever side took the last
    assert len(set(ids)) == 3 and all(i.startswith("repeat:tick:") for i in ids)
    for side in (author, runner):
        (scheduler,) = side.producer.getJobSchedulers(queue="ticks")
        assert scheduler["key"] == "tick" and scheduler["name"] == "tick"
        assert int(scheduler["every"]) == 300
    # exactly one pending iteration at any time
    pending = r.zcard(f"{author.prefix}:ticks:delayed") + r.llen(f"{author.prefix}:ticks:wait")
    assert pending <= 1
    assert runner.producer.removeJobScheduler(queue="ticks", id="tick")
    assert author.producer.getJobSchedulers(queue="ticks") == []


def test_deduplication_is_shared(sides: tuple[Side, Side]) -> None:
    first, second = sides
    kept = first.producer.add(
        queue="dd", name="once", data={"v": 1}, opts={"deduplication": {"id": "order-7"}}
    )
    for side in (first, second):
        assert side.producer.getDeduplicationJobId(queue="dd", dedupId="order-7") == kept["id"]
    again = second.producer.add(
        queue="dd", name="once", data={"v": 2}, opts={"deduplication": {"id": "order-7"}}
    )
    assert again["id"] == kept["id"]  # ignored: the first job owns the dedup id
    assert first.producer.getJobCounts(queue="dd", types=["waiting"])["waiting"] == 1
    worker = second.worker({"queue": "dd"})
    worker.expect("completed", id=kept["id"])
    # the finished job released the key: a new add is a new job
    fresh = first.producer.add(
        queue="dd", name="once", data={"v": 3}, opts={"deduplication": {"id": "order-7"}}
    )
    assert fresh["id"] != kept["id"]
