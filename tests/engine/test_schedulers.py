"""Job schedulers: BullMQ 6's layout, one job per run with several workers, cron in a zone."""

from __future__ import annotations

import json
import threading
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from flowjobs.engine import FlowJobsError, InvalidJobOptions
from flowjobs.engine.schedulers import next_cron_millis, sync_job_schedulers
from tests.helpers import wait_for


def millis_of(job_id: str) -> int:
    return int(job_id.rsplit(":", 1)[1])


def test_upsert_writes_the_bullmq_layout(queue, redis_client, prefix):
    job = queue.upsert_job_scheduler(
        "tick",
        every=60_000,
        template={"name": "beat", "data": {"t": 1}, "opts": {"attempts": 2}},
    )
    assert job.id.startswith("repeat:tick:")
    due = millis_of(job.id)
    assert redis_client.zrange(f"{prefix}:q:repeat", 0, -1, withscores=True) == [
        ("tick", float(due))
    ]
    definition = redis_client.hgetall(f"{prefix}:q:repeat:tick")
    assert definition == {
        "name": "beat",
        "every": "60000",
        "offset": str(due % 60_000),
        "data": '{"t":1}',
        "opts": '{"attempts":2}',
        "ic": "1",
    }
    stored = redis_client.hgetall(f"{prefix}:q:{job.id}")
    assert stored["rjk"] == "tick" and stored["name"] == "beat"
    assert json.loads(stored["data"]) == {"t": 1}
    opts = json.loads(stored["opts"])
    assert opts["repeat"] == {"every": 60_000, "count": 1}
    assert opts["repeatJobKey"] == "tick" and opts["jobId"] == job.id
    assert opts["attempts"] == 2 and opts["delay"] == int(stored["delay"])
    assert "prevMillis" not in opts
    # the first run of an `every` scheduler without offset or start date is now
    assert queue.get_job_state(job.id) == "waiting"


def test_pattern_scheduler_uses_its_time_zone(queue, redis_client, prefix):
    job = queue.upsert_job_scheduler(
        "morning", pattern="0 9 * * *", tz="America/New_York", limit=10
    )
    due = datetime.fromtimestamp(millis_of(job.id) / 1000, ZoneInfo("America/New_York"))
    assert (due.hour, due.minute, due.second) == (9, 0, 0)
    assert 0 < millis_of(job.id) - job.timestamp <= 24 * 3600 * 1000
    assert queue.get_job_state(job.id) == "delayed"
    opts = json.loads(redis_client.hget(f"{prefix}:q:{job.id}", "opts"))
    assert opts["repeat"] == {
        "pattern": "0 9 * * *",
        "tz": "America/New_York",
        "limit": 10,
        "count": 1,
    }
    assert opts["prevMillis"] == millis_of(job.id)
    definition = redis_client.hgetall(f"{prefix}:q:repeat:morning")
    assert definition["tz"] == "America/New_York" and definition["pattern"] == "0 9 * * *"
    assert definition["offset"] == "0" and definition["limit"] == "10"


def test_cron_in_a_non_utc_zone_runs_and_continues(queue, make_worker, redis_client, prefix):
    ran = []
    queue.upsert_job_scheduler(
        "each-second", pattern="* * * * * *", tz="Asia/Kolkata", template={"data": {"k": 1}}
    )
    make_worker("q", lambda job: ran.append(job.id) or job.data["k"])
    wait_for(lambda: len(ran) >= 3, timeout=8, message="the cron scheduler did not run 3 times")
    first, second, third = (millis_of(job_id) for job_id in ran[:3])
    assert second - first == 1000 and third - second == 1000
    opts = json.loads(redis_client.hget(f"{prefix}:q:{ran[2]}", "opts"))
    assert opts["repeat"]["count"] == 3 and opts["prevMillis"] == third
    assert opts["repeat"]["tz"] == "Asia/Kolkata"


def test_one_job_per_run_with_three_workers(queue, make_worker, redis_client, prefix):
    lock = threading.Lock()
    ran: list[str] = []

    def process(job):
        with lock:
            ran.append(job.id)

    queue.upsert_job_scheduler("fast", every=100)
    for _ in range(3):
        make_worker("q", process, concurrency=2)
    wait_for(lambda: len(ran) >= 12, timeout=8, message="the scheduler stalled")
    with lock:
        seen = sorted(millis_of(job_id) for job_id in ran)
    assert len(seen) == len(set(seen)), "a run was processed twice"
    # one chain of runs on the `every` grid: no forks (runs missed while the workers
    # started are skipped, not made up)
    assert all((b - a) % 100 == 0 for a, b in zip(seen, seen[1:], strict=False))
    pending = [
        job_id
        for job_id in redis_client.zrange(f"{prefix}:q:delayed", 0, -1)
        + redis_client.lrange(f"{prefix}:q:wait", 0, -1)
        if job_id.startswith("repeat:fast:")
    ]
    assert len(pending) <= 1
    scheduler = queue.get_job_scheduler("fast")
    assert scheduler.iteration_count >= len(seen)


def test_upsert_replaces_the_pending_run_without_duplicates(queue, redis_client, prefix):
    first = queue.upsert_job_scheduler("report", every=60_000, offset=5_000)
    second = queue.upsert_job_scheduler(
        "report", every=60_000, offset=5_000, template={"data": {"v": 2}}
    )
    assert second.id == first.id  # same slot
    assert queue.get_job(second.id).data == {"v": 2}
    assert queue.get_job_counts("waiting", "delayed") == {"waiting": 0, "delayed": 1}
    third = queue.upsert_job_scheduler("report", every=30_000)
    assert third.id != first.id and queue.get_job(first.id) is None
    # a new interval starts over: its first run is now
    assert queue.get_job_counts("waiting", "delayed") == {"waiting": 1, "delayed": 0}
    assert queue.get_job_schedulers_count() == 1


def test_limit_ends_the_schedule(queue, make_worker):
    ran = []
    queue.upsert_job_scheduler("thrice", every=50, limit=3)
    make_worker("q", lambda job: ran.append(job.id))
    wait_for(lambda: len(ran) == 3)
    wait_for(lambda: queue.get_job_counts("active") == {"active": 0})
    assert queue.get_job_counts("waiting", "delayed") == {"waiting": 0, "delayed": 0}
    assert len(ran) == 3


def test_remove_and_read_schedulers(queue, redis_client, prefix):
    queue.upsert_job_scheduler("a", every=10_000, offset=1_000)
    queue.upsert_job_scheduler("b", pattern="0 0 1 1 *", template={"name": "new-year"})
    assert queue.get_job_schedulers_count() == 2
    later, sooner = queue.get_job_schedulers()
    assert (later.id, sooner.id) == ("b", "a")
    assert [s.id for s in queue.get_job_schedulers(asc=True)] == ["a", "b"]
    assert later.name == "new-year" and later.pattern == "0 0 1 1 *" and later.every is None
    assert sooner.every == 10_000 and sooner.offset == 1_000 and sooner.iteration_count == 1
    pending = f"repeat:a:{sooner.next_millis}"
    assert queue.get_job_state(pending) == "delayed"

    assert queue.remove_job_scheduler("a") is True
    assert queue.remove_job_scheduler("a") is False
    assert queue.get_job(pending) is None
    assert queue.get_job_scheduler("a") is None
    removed = [
        fields
        for _, fields in redis_client.xrange(f"{prefix}:q:events")
        if fields["event"] == "removed"
    ]
    assert removed == [{"event": "removed", "jobId": pending, "prev": "delayed"}]


def test_the_pending_run_is_protected(queue):
    job = queue.upsert_job_scheduler("kept", every=60_000, start_date=2_000_000_000_000)
    assert millis_of(job.id) == 2_000_000_000_000
    with pytest.raises(FlowJobsError):
        queue.get_job(job.id).remove()
    assert queue.drain(delayed=True) == 0


def test_sync_job_schedulers(queue, make_queue):
    declared = {
        "nightly": {"pattern": "0 3 * * *", "tz": "Europe/Paris", "template": {"name": "backup"}},
        "poll": {"every": 30_000, "template": {"data": {"source": "feed"}}},
    }
    queue.upsert_job_scheduler("old", every=1_000)
    report = sync_job_schedulers(queue, declared)
    assert sorted(report["created"]) == ["nightly", "poll"] and report["removed"] == []
    pending = queue.get_job_scheduler("poll").next_millis
    # the same declarations again (say, the next worker start) change nothing
    again = sync_job_schedulers(queue, declared)
    assert sorted(again["unchanged"]) == ["nightly", "poll"]
    assert queue.get_job_scheduler("poll").next_millis == pending
    assert queue.get_job_counts("waiting", "delayed") == {"waiting": 2, "delayed": 1}

    declared["poll"] = {"every": 30_000, "template": {"data": {"source": "other"}}}
    changed = sync_job_schedulers(queue, declared, remove_undeclared=True)
    assert changed["updated"] == ["poll"] and changed["removed"] == ["old"]
    assert queue.get_job_scheduler("poll").template_data == {"source": "other"}
    assert sorted(s.id for s in queue.get_job_schedulers()) == ["nightly", "poll"]

    with pytest.raises(FlowJobsError, match="unknown keys"):
        sync_job_schedulers(queue, [{"id": "x", "every": 5, "cron": "* * * * *"}])


@pytest.mark.parametrize(
    "kwargs, error",
    [
        ({}, "exactly one of every"),
        ({"every": 10, "pattern": "* * * * *"}, "exactly one of every"),
        ({"pattern": "not a cron"}, "not a valid cron"),
        ({"every": 0}, "every must be"),
        ({"pattern": "* * * * *", "tz": "Mars/Olympus"}, "unknown time zone"),
        ({"every": 10, "end_date": 1_000}, "end_date is in the past"),
        ({"every": 10, "template": {"opts": {"job_id": "x"}}}, "cannot be template options"),
    ],
)
def test_bad_definitions_are_refused(queue, redis_client, prefix, kwargs, error):
    with pytest.raises((FlowJobsError, InvalidJobOptions), match=error):
        queue.upsert_job_scheduler("bad", **kwargs)
    assert redis_client.keys(f"{prefix}:*") == []


def test_next_cron_millis_with_seconds_and_zone():
    start = int(datetime(2026, 1, 1, 10, 15, 0, 500_000, ZoneInfo("UTC")).timestamp() * 1000)
    assert next_cron_millis("*/2 * * * * *", start) == start - 500 + 2_000
    paris = next_cron_millis("0 9 * * *", start, "Europe/Paris")
    assert datetime.fromtimestamp(paris / 1000, ZoneInfo("Europe/Paris")).hour == 9


def test_sync_with_an_owner_removes_only_what_that_owner_declared_before(queue):
    queue.upsert_job_scheduler("made-in-code", every=60_000)
    declared = {
        "nightly": {"pattern": "0 3 * * *", "template": {"name": "backup"}},
        "poll": {"every": 30_000},
    }
    first = sync_job_schedulers(queue, declared, owner="settings")
    assert sorted(first["created"]) == ["nightly", "poll"]
    # "poll" vanished from the settings: it goes; "made-in-code" was never theirs
    second = sync_job_schedulers(queue, {"nightly": declared["nightly"]}, owner="settings")
    assert second["removed"] == ["poll"] and second["unchanged"] == ["nightly"]
    assert sorted(s.id for s in queue.get_job_schedulers()) == ["made-in-code", "nightly"]
    # nothing declared any more: the last one goes too, and the code's one stays
    third = sync_job_schedulers(queue, {}, owner="settings")
    assert third["removed"] == ["nightly"]
    assert [s.id for s in queue.get_job_schedulers()] == ["made-in-code"]
    assert sync_job_schedulers(queue, {}, owner="settings")["removed"] == []


def test_pause_resume_and_run_now(queue):
    queue.upsert_job_scheduler(
        "poll",
        every=3_600_000,
        template={"name": "poll", "data": {"feed": 1}, "opts": {"attempts": 2}},
    )
    pending = queue.get_job_scheduler("poll").next_millis
    assert queue.get_job_counts("waiting", "delayed") == {"waiting": 1, "delayed": 0}

    assert queue.pause_job_scheduler("poll") is True
    scheduler = queue.get_job_scheduler("poll")
    assert scheduler.paused is True
    assert queue.get_job(f"repeat:poll:{pending}") is None
    assert queue.get_job_counts("waiting", "delayed") == {"waiting": 0, "delayed": 0}
    assert queue.pause_job_scheduler("nope") is False

    extra = queue.run_job_scheduler_now("poll")
    assert extra.name == "poll" and extra.data == {"feed": 1} and extra.opts["attempts"] == 2
    assert queue.get_job_scheduler("poll").paused is True  # one run, the schedule untouched

    iteration = queue.resume_job_scheduler("poll")
    assert queue.get_job_scheduler("poll").paused is False
    assert iteration is not None and iteration.id.startswith("repeat:poll:")
    assert queue.get_job_counts("delayed")["delayed"] == 1
    with pytest.raises(FlowJobsError, match='no job scheduler "nope"'):
        queue.resume_job_scheduler("nope")
