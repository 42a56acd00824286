"""Job groups: fair round-robin, per-group concurrency and rate limits, BullMQ-safe layout."""

from __future__ import annotations

import threading
import time
from collections import defaultdict

import pytest

from flowjobs.engine import InvalidJobOptions
from tests.helpers import wait_for, work_for


def test_grouped_jobs_wait_in_their_group_not_in_wait(queue, redis_client, prefix):
    job = queue.add("bill", {"n": 1}, group={"id": "tenant-42"})
    plain = queue.add("plain")
    assert redis_client.lrange(f"{prefix}:q:wait", 0, -1) == [plain.id]
    assert redis_client.lrange(f"{prefix}:q:group:tenant-42:wait", 0, -1) == [job.id]
    assert redis_client.hget(f"{prefix}:q:{job.id}", "gid") == "tenant-42"
    assert queue.get_job_state(job.id) == "waiting"
    [group] = queue.get_groups()
    assert (group.id, group.waiting, group.active, group.state) == ("tenant-42", 1, 0, "ready")
    with pytest.raises(InvalidJobOptions):
        queue.add("bad", group={"id": "a:b"})


def test_a_big_group_does_not_starve_a_small_one(queue, make_worker):
    order: list[str] = []
    # big enough that a FIFO would run all of it first; small enough to finish on a loaded CI
    queue.add_bulk([{"name": "big", "opts": {"group": {"id": "big"}}} for _ in range(200)])
    small = queue.add_bulk(
        [{"name": "small", "opts": {"group": {"id": "small"}}} for _ in range(10)]
    )
    make_worker("q", lambda job: order.append(job.name))
    wait_for(lambda: order.count("small") == 10, message="the small group starved")
    last_small = max(i for i, name in enumerate(order) if name == "small")
    assert last_small < 25, order[:30]  # turns alternate: big, small, big, small, ...
    # a processor appends before Redis records its job: wait for the records
    wait_for(lambda: queue.get_job_counts("completed")["completed"] == 210, timeout=60)
    assert len(order) == 210
    assert all(queue.get_job_state(job.id) == "completed" for job in small)
    assert queue.get_groups() == []


def test_ungrouped_jobs_take_turns_with_the_groups(queue, make_worker):
    order: list[str] = []
    queue.add_bulk([{"name": "g", "opts": {"group": {"id": "g"}}} for _ in range(20)])
    queue.add_bulk([{"name": "plain"} for _ in range(5)])
    make_worker("q", lambda job: order.append(job.name))
    wait_for(lambda: len(order) == 25)
    assert max(i for i, name in enumerate(order) if name == "plain") < 12


def test_group_concurrency_holds_across_workers(queue, make_worker):
    queue.set_group_concurrency(2)
    assert queue.get_group_settings() == {"concurrency": 2, "max": None, "duration": None}
    lock = threading.Lock()
    running: dict[str, int] = defaultdict(int)
    peak: dict[str, int] = defaultdict(int)
    overall_peak = 0

    def process(job):
        nonlocal overall_peak
        group = job.opts["group"]["id"]
        with lock:
            running[group] += 1
            peak[group] = max(peak[group], running[group])
            overall_peak = max(overall_peak, sum(running.values()))
        work_for(0.05)
        with lock:
            running[group] -= 1

    for group in ("a", "b"):
        queue.add_bulk([{"name": "w", "opts": {"group": {"id": group}}} for _ in range(8)])
    for _ in range(2):
        make_worker("q", process, concurrency=5)
    wait_for(lambda: queue.get_job_counts("completed")["completed"] == 16)
    assert peak == {"a": 2, "b": 2}
    assert overall_peak > 2  # the groups ran side by side


def test_group_rate_limit_from_worker_settings(queue, make_worker, redis_client, prefix):
    seen: dict[str, list[int]] = defaultdict(list)
    queue.add_bulk([{"name": "x", "opts": {"group": {"id": "slow"}}} for _ in range(6)])
    queue.add_bulk([{"name": "x", "opts": {"group": {"id": "other"}}} for _ in range(2)])
    make_worker(
        "q",
        lambda job: seen[job.opts["group"]["id"]].append(int(time.time() * 1000)),
        concurrency=4,
        group_limiter={"max": 2, "duration": 400},
    )
    wait_for(lambda: len(seen["other"]) == 2 and len(seen["slow"]) == 6, timeout=8)
    assert redis_client.hget(f"{prefix}:q:meta", "groupMax") == "2"
    slow = sorted(seen["slow"])
    # six jobs, two per 400 ms window: three windows
    assert slow[-1] - slow[0] >= 700
    assert slow[1] - slow[0] < 300 and slow[2] - slow[0] >= 350
    # the other group was not held back by the slow one
    assert max(seen["other"]) - slow[0] < 300


def test_retried_and_delayed_grouped_jobs_return_to_their_group(
    queue, make_worker, redis_client, prefix
):
    queue.set_group_concurrency(1)
    tries = []

    def process(job):
        tries.append(job.id)
        if len(tries) == 1:
            raise ValueError("once")

    first = queue.add("r", group={"id": "g"}, attempts=2)
    later = queue.add("d", group={"id": "g"}, delay=200)
    make_worker("q", process)
    wait_for(lambda: queue.get_job_state(later.id) == "completed")
    wait_for(lambda: queue.get_job_state(first.id) == "completed")
    assert tries.count(first.id) == 2
    assert redis_client.llen(f"{prefix}:q:wait") == 0


def test_a_grouped_job_found_in_wait_is_moved_to_its_group(
    queue, make_worker, redis_client, prefix
):
    """Paths that know no groups (a stalled job moved back by BullMQ) leave grouped jobs in
    wait; with group limits set, the next fetch puts them back in their group."""
    queue.set_group_concurrency(1)
    running = threading.Event()
    release = threading.Event()

    def process(job):
        if job.name == "hold":
            running.set()
            release.wait(5)

    holder = queue.add("hold", group={"id": "g"})
    make_worker("q", process, concurrency=2)
    assert running.wait(5)
    stray = queue.add("stray", group={"id": "g"})
    # as if BullMQ's stalled check had put it back in wait
    redis_client.lrem(f"{prefix}:q:group:g:wait", 0, stray.id)
    redis_client.rpush(f"{prefix}:q:wait", stray.id)
    redis_client.zadd(f"{prefix}:q:marker", {"0": 0})
    wait_for(lambda: redis_client.llen(f"{prefix}:q:wait") == 0)
    # the group is at its concurrency: the stray waits in the group
    assert queue.get_job_state(stray.id) == "waiting"
    assert redis_client.lrange(f"{prefix}:q:group:g:wait", 0, -1) == [stray.id]
    release.set()
    wait_for(lambda: queue.get_job_state(stray.id) == "completed")
    assert queue.get_job_state(holder.id) == "completed"


def test_a_group_stuck_at_its_concurrency_heals(queue, make_worker, redis_client, prefix):
    """A job that left active without the group noticing (a BullMQ worker finished it)
    no longer counts once it is neither locked nor active."""
    queue.set_group_concurrency(1)
    job = queue.add("x", group={"id": "g"})
    redis_client.sadd(f"{prefix}:q:group:g:active", "gone")
    redis_client.sadd(f"{prefix}:q:groups:maxed", "g")
    redis_client.zrem(f"{prefix}:q:groups:ready", "g")
    assert queue.get_group("g").state == "maxed"
    make_worker("q", lambda job: None)
    wait_for(lambda: queue.get_job_state(job.id) == "completed")
    assert redis_client.smembers(f"{prefix}:q:group:g:active") == set()


def test_drain_removes_waiting_grouped_jobs(queue, redis_client, prefix):
    queue.add_bulk([{"name": "x", "opts": {"group": {"id": g}}} for g in ("a", "a", "b")])
    queue.add("plain")
    assert queue.drain() == 4
    assert queue.get_groups() == []
    assert redis_client.keys(f"{prefix}:q:group:*") == []


def test_scheduler_runs_join_their_group(queue, redis_client, prefix):
    run = queue.upsert_job_scheduler("s", every=60_000, template={"opts": {"group": {"id": "g"}}})
    assert redis_client.hget(f"{prefix}:q:{run.id}", "gid") == "g"
    assert queue.get_job_state(run.id) == "waiting"
    assert redis_client.lrange(f"{prefix}:q:group:g:wait", 0, -1) == [run.id]


def test_removing_a_waiting_grouped_job(queue, redis_client, prefix):
    job = queue.add("x", group={"id": "g"})
    job.remove()
    assert redis_client.llen(f"{prefix}:q:group:g:wait") == 0
    removed = [f for _, f in redis_client.xrange(f"{prefix}:q:events") if f["event"] == "removed"]
    assert removed == [{"event": "removed", "jobId": job.id, "prev": "wait"}]
