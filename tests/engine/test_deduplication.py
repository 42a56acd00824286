"""Deduplication (BullMQ's `opts.de`): simple, throttle, debounce, replace, keepLastIfActive."""

from __future__ import annotations

import json
import threading

import pytest

from flowjobs.engine import ParentJobNotFound
from tests.helpers import wait_for


def events(redis_client, prefix, name="deduplicated", queue="q"):
    entries = redis_client.xrange(f"{prefix}:{queue}:events")
    return [fields for _, fields in entries if fields["event"] == name]


def test_simple_mode_keeps_the_first_job_until_it_finishes(
    queue, make_worker, redis_client, prefix
):
    first = queue.add("sync", {"v": 1}, deduplication={"id": "customer-7"})
    second = queue.add("sync", {"v": 2}, deduplication={"id": "customer-7"})
    assert second.id == first.id
    assert queue.get_job_counts("waiting") == {"waiting": 1}
    assert queue.get_deduplication_job_id("customer-7") == first.id
    stored = redis_client.hgetall(f"{prefix}:q:{first.id}")
    assert stored["deid"] == "customer-7"
    assert json.loads(stored["opts"])["de"] == {"id": "customer-7"}
    assert redis_client.pttl(f"{prefix}:q:de:customer-7") == -1
    # the dropped add still took a number from the id counter, like BullMQ
    [event] = events(redis_client, prefix)
    assert event == {
        "event": "deduplicated",
        "jobId": first.id,
        "deduplicationId": "customer-7",
        "deduplicatedJobId": str(int(first.id) + 1),
    }
    assert not events(redis_client, prefix, "debounced")  # BullMQ 6: no debounced event

    make_worker("q", lambda job: job.data["v"])
    wait_for(lambda: queue.get_job_state(first.id) == "completed")
    assert queue.get_deduplication_job_id("customer-7") is None
    third = queue.add("sync", {"v": 3}, deduplication={"id": "customer-7"})
    assert third.id != first.id
    wait_for(lambda: queue.get_job_state(third.id) == "completed")


def test_throttle_mode_owns_the_id_for_the_ttl_even_after_the_job_finished(
    queue, make_worker, redis_client, prefix
):
    dedup = {"id": "report", "ttl": 600}
    first = queue.add("render", {}, deduplication=dedup)
    assert 0 < redis_client.pttl(f"{prefix}:q:de:report") <= 600
    make_worker("q", lambda job: None)
    wait_for(lambda: queue.get_job_state(first.id) == "completed")
    # finished, but the window is still open: a new add is dropped
    assert queue.add("render", {}, deduplication=dedup).id == first.id
    wait_for(
        lambda: queue.get_deduplication_job_id("report") is None,
        message="the throttle window never closed",
    )
    later = queue.add("render", {}, deduplication=dedup)
    assert later.id != first.id


def test_debounce_mode_restarts_the_window_on_each_duplicate(queue, redis_client, prefix):
    dedup = {"id": "search", "ttl": 5_000, "extend": True}
    first = queue.add("index", {"q": "a"}, deduplication=dedup)
    key = f"{prefix}:q:de:search"
    redis_client.pexpire(key, 1_000)  # as if most of the window had passed
    again = queue.add("index", {"q": "b"}, deduplication=dedup)
    assert again.id == first.id
    assert redis_client.pttl(key) > 4_000  # extended back to the full ttl
    assert queue.get_job(first.id).data == {"q": "a"}
    assert len(events(redis_client, prefix)) == 1


def test_replace_mode_swaps_a_delayed_job_for_the_newest(queue, redis_client, prefix):
    dedup = {"id": "digest", "ttl": 10_000, "extend": True, "replace": True}
    first = queue.add("mail", {"n": 1}, delay=5_000, deduplication=dedup)
    second = queue.add("mail", {"n": 2}, delay=5_000, deduplication=dedup)
    assert second.id != first.id
    assert queue.get_job(first.id) is None
    assert queue.get_job_state(second.id) == "delayed"
    assert queue.get_job_ids("delayed") == [second.id]
    assert queue.get_deduplication_job_id("digest") == second.id
    removed = events(redis_client, prefix, "removed")
    assert removed == [{"event": "removed", "jobId": first.id, "prev": "delayed"}]
    [event] = events(redis_client, prefix)
    assert event["jobId"] == second.id and event["deduplicatedJobId"] == first.id


def test_replace_mode_keeps_a_job_that_is_no_longer_delayed(queue):
    dedup = {"id": "digest", "replace": True}
    first = queue.add("mail", {"n": 1}, deduplication=dedup)
    assert queue.add("mail", {"n": 2}, delay=1_000, deduplication=dedup).id == first.id
    assert queue.get_job_counts("waiting", "delayed") == {"waiting": 1, "delayed": 0}


def test_keep_last_if_active_runs_the_newest_duplicate_after_the_active_one(
    queue, make_worker, redis_client, prefix
):
    release = threading.Event()
    seen = []

    def process(job):
        seen.append(job.data["v"])
        if job.data["v"] == 1:
            release.wait(10)
        return job.data["v"]

    dedup = {"id": "sync", "keep_last_if_active": True, "ttl": 60_000}
    first = queue.add("sync", {"v": 1}, deduplication=dedup)
    make_worker("q", process)
    wait_for(lambda: queue.get_job_state(first.id) == "active")
    assert queue.add("sync", {"v": 2}, deduplication=dedup).id == first.id
    latest = queue.add("sync", {"v": 3}, job_id="sync-3", deduplication=dedup)
    assert latest.id == first.id
    pending = redis_client.hgetall(f"{prefix}:q:dn:sync")
    assert pending["jid"] == "sync-3" and json.loads(pending["data"]) == {"v": 3}
    assert redis_client.pttl(f"{prefix}:q:de:sync") == -1  # no expiry while active
    assert len(events(redis_client, prefix)) == 2

    release.set()
    wait_for(lambda: queue.get_job_state("sync-3") == "completed")
    assert seen == [1, 3]
    assert queue.get_job("sync-3").returnvalue == 3
    assert not redis_client.exists(f"{prefix}:q:dn:sync")
    assert queue.get_deduplication_job_id("sync") is None  # released when sync-3 finished


def test_bulk_add_deduplicates_within_the_batch(queue):
    jobs = queue.add_bulk(
        [
            {"name": "a", "data": {"i": i}, "opts": {"deduplication": {"id": "same"}}}
            for i in range(3)
        ]
    )
    assert len({job.id for job in jobs}) == 1
    assert queue.get_job_counts("waiting") == {"waiting": 1}


def test_bulk_add_with_an_error_writes_no_deduplication_key(queue, redis_client, prefix):
    with pytest.raises(ParentJobNotFound):
        queue.add_bulk(
            [
                {"name": "a", "opts": {"deduplication": {"id": "d1", "ttl": 10_000}}},
                {"name": "b", "opts": {"parent": {"id": "missing", "queue": "q"}}},
            ]
        )
    assert redis_client.keys(f"{prefix}:*") == []


def test_remove_deduplication_key_only_for_the_owner(queue):
    job = queue.add("a", {}, deduplication={"id": "k"})
    assert queue.remove_deduplication_key("k", job_id="someone-else") is False
    assert queue.get_deduplication_job_id("k") == job.id
    assert queue.remove_deduplication_key("k", job_id=job.id) is True
    assert queue.get_deduplication_job_id("k") is None
    queue.add("a", {}, deduplication={"id": "k2"})
    assert queue.remove_deduplication_key("k2") is True


def test_removing_the_owner_releases_the_id(queue):
    job = queue.add("a", {}, deduplication={"id": "k"})
    job.remove()
    assert queue.get_deduplication_job_id("k") is None
    assert queue.add("a", {}, deduplication={"id": "k"}).id != job.id


def test_a_stale_owner_is_taken_over(queue, redis_client, prefix):
    redis_client.set(f"{prefix}:q:de:k", "vanished")  # its job was lost
    job = queue.add("a", {}, deduplication={"id": "k"})
    assert job.id != "vanished"
    assert queue.get_deduplication_job_id("k") == job.id
