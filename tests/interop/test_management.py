"""Managing jobs across implementations: one side acts on jobs the other side moved.

With `sides` = (A, B): A adds the jobs and manages them (retry, promote, remove,
global concurrency), B's worker processes them; both read the outcome.
"""

from __future__ import annotations

from typing import Any

import pytest
import redis

from tests.helpers import wait_for

Side = Any


def test_retention_logs_and_progress(sides: tuple[Side, Side], r: redis.Redis) -> None:
    owner, worker_side = sides
    base = f"{owner.prefix}:keep"
    gone = owner.producer.add(queue="keep", name="gone", opts={"removeOnComplete": True})
    fails = [
        owner.producer.add(queue="keep", name="fails", opts={"removeOnFail": {"count": 1}})["id"]
        for _ in range(2)
    ]
    noted = owner.producer.add(queue="keep", name="noted", opts={"keepLogs": 5})
    worker = worker_side.worker(
        {
            "queue": "keep",
            "concurrency": 1,
            "doneAfter": 4,
            "behaviours": {
                "fails": {"action": "throw", "message": "nope"},
                "noted": {"action": "echo", "log": "a log line ✓", "progress": {"step": 2}},
            },
        }
    )
    worker.expect("done")
    for side in (owner, worker_side):
        assert side.producer.getJob(queue="keep", id=gone["id"]) is None
        assert side.producer.getJob(queue="keep", id=fails[0]) is None
        assert side.producer.getJob(queue="keep", id=fails[1])["failedReason"] == "nope"
        assert side.producer.getJobLogs(queue="keep", id=noted["id"]) == {
            "logs": ["a log line ✓"],
            "count": 1,
        }
        assert side.producer.getJob(queue="keep", id=noted["id"])["progress"] == {"step": 2}
        assert side.producer.getJobCounts(queue="keep", types=["completed", "failed"]) == {
            "completed": 1,
            "failed": 1,
        }
    assert r.exists(f"{base}:{gone['id']}") == 0
    assert r.zrange(f"{base}:failed", 0, -1) == [fails[1]]


def test_retry_promote_and_remove(sides: tuple[Side, Side], r: redis.Redis) -> None:
    owner, worker_side = sides
    failing = owner.producer.add(queue="ops", name="second-chance", data={"v": 1})
    later = owner.producer.add(queue="ops", name="later", opts={"delay": 600_000})
    worker = worker_side.worker(
        {
            "queue": "ops",
            "behaviours": {
                "second-chance": [{"action": "throw", "message": "first run"}, {"action": "echo"}]
            },
        }
    )
    worker.expect("failed", id=failing["id"])

    owner.producer.retry(queue="ops", id=failing["id"])
    worker.expect("completed", id=failing["id"])
    owner.producer.promote(queue="ops", id=later["id"])
    worker.expect("completed", id=later["id"])
    for side in (owner, worker_side):
        job = side.producer.getJob(queue="ops", id=failing["id"])
        assert job["returnvalue"] == {"v": 1}
        assert job["attemptsMade"] == 2
        assert side.producer.getJob(queue="ops", id=later["id"])["delay"] == 0

    events = worker_side.events({"queue": "ops"})
    owner.producer.remove(queue="ops", id=failing["id"])
    removed = events.expect_queue_event("removed", jobId=failing["id"])
    assert removed["fields"]["prev"] == "completed"
    for side in (owner, worker_side):
        assert side.producer.getJob(queue="ops", id=failing["id"]) is None
        assert side.producer.getJobState(queue="ops", id=failing["id"]) == "unknown"
    assert r.exists(f"{owner.prefix}:ops:{failing['id']}") == 0
    assert events.queue_events("waiting", jobId=failing["id"], prev="failed")
    assert events.queue_events("waiting", jobId=later["id"], prev="delayed")


def test_global_concurrency_set_by_the_other_side(sides: tuple[Side, Side]) -> None:
    owner, worker_side = sides
    owner.producer.setGlobalConcurrency(queue="capped", concurrency=1)
    owner.producer.addBulk(queue="capped", jobs=[{"name": f"slow-{i}"} for i in range(3)])
    worker = worker_side.worker(
        {
            "queue": "capped",
            "concurrency": 3,
            "doneAfter": 3,
            "behaviours": {"*": {"action": "echo", "sleepMs": 300}},
        }
    )
    worker.expect("done", timeout=30)
    starts = sorted(line["at"] for line in worker.where("process"))
    assert len(starts) == 3
    assert all(b - a >= 300 for a, b in zip(starts, starts[1:], strict=False)), starts


@pytest.mark.parametrize("concurrency", [1, 2])
def test_rate_limit_shared_by_workers_of_both_sides(
    node: Any, flowjobs: Any, concurrency: int
) -> None:
    node.producer.addBulk(queue="limited", jobs=[{"name": f"n{i}"} for i in range(3)])
    flowjobs.producer.addBulk(queue="limited", jobs=[{"name": f"f{i}"} for i in range(3)])
    # concurrency 1 exercises fetch-next inside the finishing script, 2 a plain fetch
    spec = {"queue": "limited", "concurrency": concurrency, "limiter": {"max": 1, "duration": 400}}
    workers = [node.worker(spec), flowjobs.worker(spec)]
    wait_for(
        lambda: sum(len(w.where("completed")) for w in workers) == 6,
        timeout=30,
        interval=0.05,
        message="6 jobs completed by the two workers",
    )
    starts = sorted(line["at"] for w in workers for line in w.where("process"))
    assert len(starts) == 6
    # one shared limiter key: one job per 400 ms window, whichever side fetches (the
    # start times are taken in the processors, so allow for fetch-to-start latency)
    assert starts[-1] - starts[0] >= 5 * 400 - 100, starts
    assert all(b - a >= 250 for a, b in zip(starts, starts[1:], strict=False)), starts


def test_workers_list_each_other(node: Any, flowjobs: Any, prefix: str) -> None:
    node.worker({"queue": "who", "name": "node-worker"})
    flowjobs.worker({"queue": "who", "name": "py-worker"})
    base = f"{prefix}:d2hv"  # base64("who")
    expected = [f"{base}:w:node-worker", f"{base}:w:py-worker"]
    assert node.producer.getWorkers(queue="who") == expected
    assert flowjobs.producer.getWorkers(queue="who") == expected


def test_worker_settings_apply_to_every_fetched_job(
    sides: tuple[Side, Side], r: redis.Redis
) -> None:
    owner, worker_side = sides
    owner.producer.addBulk(
        queue="named", jobs=[{"name": "quick"}, {"name": "quick"}, {"name": "slow"}]
    )
    worker = worker_side.worker(
        {
            "queue": "named",
            "name": "w-one",
            "concurrency": 1,
            "lockDuration": 90_000,
            "behaviours": {"slow": {"action": "hang"}},
        }
    )
    slow = worker.expect("process", name="slow")
    # the jobs after the first come from the fetch-next inside the finishing script
    assert r.pttl(f"{owner.prefix}:named:{slow['id']}:lock") > 60_000
    for side in (owner, worker_side):
        jobs = side.producer.getJobs(queue="named", types=["completed", "active"])
        assert sorted(j["processedBy"] for j in jobs) == ["w-one"] * 3
