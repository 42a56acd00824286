"""Job schedulers shared by Node.js BullMQ and flowjobs, both directions.

A scheduler upserted on one side is continued by the other side's workers (the
side that takes an iteration produces the next one), workers of both sides on
one queue make exactly one job per run, both sides read the same scheduler
(every, pattern, tz, name, template), compute the same cron times, and remove
or replace each other's schedulers without leaving duplicates behind.
"""

from __future__ import annotations

import json
import time
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import redis

from tests.helpers import wait_for

from .flowjobs_side import FlowjobsHarness
from .node import LineLog, NodeHarness

Side = NodeHarness | FlowjobsHarness


def millis_of(job_id: str, scheduler_id: str) -> int:
    head = f"repeat:{scheduler_id}:"
    assert job_id.startswith(head), job_id
    return int(job_id[len(head) :])


def pending(r: redis.Redis, prefix: str, queue: str) -> list[str]:
    """Ids of the jobs not started yet (delayed, prioritized, wait)."""
    key = f"{prefix}:{queue}"
    return (
        r.zrange(f"{key}:delayed", 0, -1)
        + r.zrange(f"{key}:prioritized", 0, -1)
        + r.lrange(f"{key}:wait", 0, -1)
    )


def stop(worker: Any) -> None:
    """Stops a worker of either side (so what it has written stays still)."""
    if hasattr(worker, "stop"):
        worker.stop()
    else:
        worker.close()


def views(queue: str, *readers: Side) -> list[Any]:
    """getJobSchedulers as each side reads it (Node's shape)."""
    return [reader.producer.getJobSchedulers(queue=queue, asc=True) for reader in readers]


def test_every_scheduler_is_continued_by_the_other_side(
    sides: tuple[Side, Side], r: redis.Redis
) -> None:
    author, runner = sides
    first = author.producer.upsertJobScheduler(
        queue="ev",
        id="tick",
        repeat={"every": 300},
        template={"name": "tick", "data": {"n": 1}, "opts": {"attempts": 2}},
    )
    # each run fails once and passes on its retry: a retried iteration makes no new one
    behaviours = {"tick": [{"action": "throw", "message": "once"}, {"action": "echo"}]}
    worker = runner.worker({"queue": "ev", "behaviours": behaviours})
    done = worker.expect_count("completed", 4, timeout=30)
    runs = [line for line in worker.where("process") if line["execution"] == 1][:4]
    ids = [line["id"] for line in runs]
    assert ids[0] == first["id"] and [line["id"] for line in done[:4]] == ids
    taken = [line["id"] for line in worker.where("process")]
    assert all(taken.count(job_id) <= 2 for job_id in taken)
    slots = [millis_of(job_id, "tick") for job_id in ids]
    # every run follows the one before on the `every` grid (a late fetch may skip slots)
    assert all(b > a and (b - a) % 300 == 0 for a, b in zip(slots, slots[1:], strict=False))
    for index, line in enumerate(runs):
        # iterations 2.. were produced by the runner when it took the one before
        assert line["name"] == "tick" and line["data"] == {"n": 1}
        assert line["opts"]["repeat"]["every"] == 300
        assert line["opts"]["repeat"]["count"] == index + 1
        assert line["opts"]["attempts"] == 2
        stored = r.hgetall(f"{author.prefix}:ev:{line['id']}")
        assert stored["rjk"] == "tick" and json.loads(stored["opts"])["repeatJobKey"] == "tick"
    stop(worker)
    node_view, flowjobs_view = views("ev", author, runner)
    assert node_view == flowjobs_view
    (scheduler,) = node_view
    assert scheduler["iterationCount"] >= 4 and scheduler["every"] == 300
    assert scheduler["template"] == {"data": {"n": 1}, "opts": {"attempts": 2}}
    assert len(pending(r, author.prefix, "ev")) <= 1


def test_cron_scheduler_with_tz_is_continued_by_the_other_side(
    sides: tuple[Side, Side], r: redis.Redis
) -> None:
    author, runner = sides
    author.producer.upsertJobScheduler(
        queue="cron",
        id="sec",
        repeat={"pattern": "* * * * * *", "tz": "America/New_York"},
        template={"name": "beat", "data": {"beat": True}},
    )
    worker = runner.worker({"queue": "cron"})
    worker.expect_count("completed", 3, timeout=30)
    runs = worker.where("process")[:3]
    slots = [millis_of(line["id"], "sec") for line in runs]
    assert all(slot % 1000 == 0 for slot in slots)
    assert all(b > a for a, b in zip(slots, slots[1:], strict=False))
    for index, line in enumerate(runs):
        assert line["data"] == {"beat": True}
        assert line["opts"]["prevMillis"] == slots[index]
        assert line["opts"]["repeat"]["pattern"] == "* * * * * *"
        assert line["opts"]["repeat"]["tz"] == "America/New_York"
        assert line["opts"]["repeat"]["count"] == index + 1
    stop(worker)
    node_view, flowjobs_view = views("cron", author, runner)
    assert node_view == flowjobs_view
    assert node_view[0]["pattern"] == "* * * * * *" and node_view[0]["tz"] == "America/New_York"
    assert len(pending(r, author.prefix, "cron")) <= 1


# (pattern, tz) -> the wall-clock rule it stands for, checked against zoneinfo
CRON_CASES = [
    ("0 0 9 * * *", "Asia/Tokyo"),
    ("0 30 2 * * *", "America/New_York"),
    ("0 15 10 * * 1", "Europe/Paris"),
    ("0 0 0 1 * *", "Australia/Sydney"),
    ("0 45 5 * * *", "Asia/Kolkata"),
    ("0 0 12 * * *", None),
]


def test_both_sides_compute_the_same_cron_times(
    node: NodeHarness, flowjobs: FlowjobsHarness
) -> None:
    nexts: dict[str, list[int]] = {}
    for side in (node, flowjobs):
        for index, (pattern, tz) in enumerate(CRON_CASES):
            repeat = {"pattern": pattern, **({"tz": tz} if tz else {})}
            side.producer.upsertJobScheduler(
                queue=f"tz-{side.side}", id=f"c{index}", repeat=repeat, template={"name": "c"}
            )
        read = {s["key"]: s for s in side.producer.getJobSchedulers(queue=f"tz-{side.side}")}
        nexts[side.side] = [read[f"c{index}"]["next"] for index in range(len(CRON_CASES))]
    assert nexts["node"] == nexts["flowjobs"]
    for (pattern, tz), next_ms in zip(CRON_CASES, nexts["node"], strict=True):
        local = datetime.fromtimestamp(next_ms / 1000, ZoneInfo(tz or "UTC"))
        second, minute, hour, day, _, weekday = pattern.split()
        assert (local.second, local.minute, local.hour) == (int(second), int(minute), int(hour))
        if day != "*":
            assert local.day == int(day)
        if weekday != "*":
            assert local.isoweekday() % 7 == int(weekday)
        # the first matching time: nothing earlier (one period back is in the past)
        period = timedelta(days=31 if day != "*" else 7 if weekday != "*" else 1)
        assert next_ms > time.time() * 1000
        assert (local - period).timestamp() * 1000 < time.time() * 1000 + 1000


def test_limit_offset_and_start_date_are_honoured_by_the_other_side(
    sides: tuple[Side, Side], r: redis.Redis
) -> None:
    author, runner = sides
    # Far enough ahead that the upsert (a Node process under a loaded CI machine) happens
    # before it: a start date already past at upsert time means "from now" on both sides.
    start = int(time.time() * 1000) + 2500
    author.producer.upsertJobScheduler(
        queue="lim", id="three", repeat={"every": 200, "limit": 3}, template={"name": "three"}
    )
    author.producer.upsertJobScheduler(
        queue="lim", id="off", repeat={"every": 1000, "offset": 250}, template={"name": "off"}
    )
    author.producer.upsertJobScheduler(
        queue="lim", id="start", repeat={"every": 60_000, "startDate": start}, template={}
    )
    worker = runner.worker({"queue": "lim"})
    worker.expect_count("completed", 3, timeout=30, name="three")
    worker.expect_count("completed", 2, timeout=30, name="off")
    worker.expect("completed", timeout=30, name="start")
    # the third run of "three" made no fourth (it was taken before it finished)
    three = [line["id"] for line in worker.where("process", name="three")]
    assert len(three) == 3
    assert [line["opts"]["repeat"]["count"] for line in worker.where("process", name="three")] == [
        1,
        2,
        3,
    ]
    assert [
        job for job in pending(r, author.prefix, "lim") if job.startswith("repeat:three:")
    ] == []
    offsets = {millis_of(line["id"], "off") % 1000 for line in worker.where("process", name="off")}
    assert offsets == {250}
    (started,) = worker.where("process", name="start")
    assert millis_of(started["id"], "start") == start and started["at"] >= start
    stop(worker)
    node_view, flowjobs_view = views("lim", *sides)
    assert node_view == flowjobs_view
    by_id = {s["key"]: s for s in node_view}
    assert by_id["three"]["limit"] == 3 and by_id["three"]["iterationCount"] == 3
    assert by_id["off"]["offset"] == 250 and by_id["off"]["next"] % 1000 == 250
    assert by_id["start"]["startDate"] == start and by_id["start"]["next"] == start + 60_000


def test_one_job_per_iteration_with_workers_of_both_sides(
    sides: tuple[Side, Side], r: redis.Redis
) -> None:
    author, other = sides
    author.producer.upsertJobScheduler(
        queue="both", id="duo", repeat={"every": 300}, template={"name": "duo"}
    )
    # each run outlasts the interval, so the next one is due while this worker is busy
    # and the worker of the other side takes it: the two sides alternate
    spec = {"queue": "both", "concurrency": 1, "behaviours": {"duo": {"sleepMs": 450}}}
    workers: list[LineLog] = [author.worker(spec), other.worker(spec)]

    def completed() -> list[str]:
        return [line["id"] for w in workers for line in w.where("completed")]

    wait_for(lambda: len(completed()) >= 8, timeout=30, message="8 runs of the scheduler")
    assert author.producer.removeJobScheduler(queue="both", id="duo") is True
    ids = completed()
    taken = [line["id"] for w in workers for line in w.where("process")]
    assert len(taken) == len(set(taken)), f"an iteration ran twice: {sorted(taken)}"
    assert set(ids) <= set(taken)
    per_side = [len(w.where("process")) for w in workers]
    assert min(per_side) >= 2, f"runs per side (author, other): {per_side}"
    slots = sorted(millis_of(job_id, "duo") for job_id in taken)
    assert all((b - a) % 300 == 0 for a, b in zip(slots, slots[1:], strict=False))
    # once the last started run is over, nothing is left and nothing new appears
    wait_for(lambda: not r.llen(f"{author.prefix}:both:active"), timeout=10)
    assert pending(r, author.prefix, "both") == []
    assert r.zcard(f"{author.prefix}:both:repeat") == 0


def test_scheduler_views_agree(sides: tuple[Side, Side]) -> None:
    author, reader = sides
    now = int(time.time() * 1000)
    end = now + 86_400_000
    start = now + 3_600_000
    author.producer.upsertJobScheduler(
        queue="view",
        id="every-5",
        repeat={"every": 60_000, "limit": 5, "endDate": end},
        template={"name": "rollup", "data": {"scope": "daily", "ids": [1, 2]}},
    )
    author.producer.upsertJobScheduler(
        queue="view",
        id="cron-paris",
        repeat={"pattern": "0 0 9 * * 1-5", "tz": "Europe/Paris", "startDate": start},
        template={
            "name": "report",
            "data": {"to": "ops"},
            "opts": {"attempts": 3, "backoff": {"type": "fixed", "delay": 50}, "priority": 4},
        },
    )
    author.producer.upsertJobScheduler(queue="view", id="bare", repeat={"every": 90_000})
    for scheduler_id in ("every-5", "cron-paris", "bare", "missing"):
        one = [side.producer.getJobScheduler(queue="view", id=scheduler_id) for side in sides]
        assert one[0] == one[1], scheduler_id
    assert author.producer.getJobScheduler(queue="view", id="missing") is None
    listed = views("view", author, reader)
    assert listed[0] == listed[1]
    by_id = {s["key"]: s for s in listed[0]}
    assert by_id["every-5"] | {"next": 0, "offset": 0} == {
        "key": "every-5",
        "name": "rollup",
        "next": 0,
        "offset": 0,
        "iterationCount": 1,
        "every": 60_000,
        "limit": 5,
        "endDate": end,
        "template": {"data": {"scope": "daily", "ids": [1, 2]}},
    }
    cron = by_id["cron-paris"]
    assert cron["pattern"] == "0 0 9 * * 1-5" and cron["tz"] == "Europe/Paris"
    assert cron["startDate"] == start and cron["name"] == "report"
    assert cron["template"] == {
        "data": {"to": "ops"},
        "opts": {"attempts": 3, "backoff": {"type": "fixed", "delay": 50}, "priority": 4},
    }
    nine = datetime.fromtimestamp(cron["next"] / 1000, ZoneInfo("Europe/Paris"))
    assert (nine.hour, nine.minute) == (9, 0) and nine.isoweekday() <= 5
    assert by_id["bare"]["name"] == "bare" and "template" not in by_id["bare"]
    assert [side.producer.getJobSchedulersCount(queue="view") for side in sides] == [3, 3]


def test_remove_on_one_side_removes_for_the_other(sides: tuple[Side, Side], r: redis.Redis) -> None:
    author, remover = sides
    listeners = [side.events({"queue": "rm"}) for side in sides]
    cron = author.producer.upsertJobScheduler(
        queue="rm", id="later", repeat={"pattern": "0 0 3 * * *", "tz": "Europe/Berlin"}
    )
    now_run = author.producer.upsertJobScheduler(queue="rm", id="now", repeat={"every": 60_000})
    assert r.zscore(f"{author.prefix}:rm:delayed", cron["id"]) is not None
    assert r.lrange(f"{author.prefix}:rm:wait", 0, -1) == [now_run["id"]]

    assert remover.producer.removeJobScheduler(queue="rm", id="later") is True
    assert remover.producer.removeJobScheduler(queue="rm", id="now") is True
    for side in sides:
        assert side.producer.getJobSchedulers(queue="rm") == []
        assert side.producer.getJobScheduler(queue="rm", id="later") is None
        assert side.producer.removeJobScheduler(queue="rm", id="later") is False
    # the delayed iteration went with its scheduler; the one already in wait stays and runs
    assert author.producer.getJob(queue="rm", id=cron["id"]) is None
    assert r.exists(f"{author.prefix}:rm:repeat:later", f"{author.prefix}:rm:repeat:now") == 0
    for listener in listeners:
        listener.expect_queue_event("removed", jobId=cron["id"], prev="delayed")
    worker = author.worker({"queue": "rm"})
    worker.expect("completed", id=now_run["id"])
    # taking it produced nothing: its scheduler is gone
    marker = author.producer.add(queue="rm", name="marker")
    worker.expect("completed", id=marker["id"])
    assert pending(r, author.prefix, "rm") == []
    assert r.zcard(f"{author.prefix}:rm:repeat") == 0
    for listener in listeners:
        listener.expect_queue_event("added", jobId=marker["id"])
        added = [line["fields"]["jobId"] for line in listener.queue_events("added")]
        assert added == [cron["id"], now_run["id"], marker["id"]]


def test_upsert_replaces_without_duplicates(sides: tuple[Side, Side], r: redis.Redis) -> None:
    author, other = sides
    key = f"{author.prefix}:up"
    # prioritized pending runs (template priority) are replaced as well as waiting ones
    template = {"name": "s", "data": {"v": 1}, "opts": {"priority": 2}}
    first = author.producer.upsertJobScheduler(
        queue="up", id="s", repeat={"every": 60_000}, template=template
    )
    assert r.zscore(f"{key}:prioritized", first["id"]) is not None
    # same interval: the pending run keeps its slot and takes the new template
    same = other.producer.upsertJobScheduler(
        queue="up", id="s", repeat={"every": 60_000}, template={"name": "s", "data": {"v": 2}}
    )
    assert same["id"] == first["id"]
    assert pending(r, author.prefix, "up") == [first["id"]]
    for side in sides:
        assert side.producer.getJob(queue="up", id=first["id"])["data"] == {"v": 2}
    assert json.loads(r.hget(f"{key}:repeat:s", "data")) == {"v": 2}

    # a new interval: a new slot, and still one pending run
    longer = author.producer.upsertJobScheduler(
        queue="up", id="s", repeat={"every": 120_000}, template={"name": "s2", "data": {"v": 3}}
    )
    assert pending(r, author.prefix, "up") == [longer["id"]]
    assert r.exists(f"{key}:{first['id']}") == 0
    # a pattern instead: the definition is rewritten (no stale `every`)
    cron = other.producer.upsertJobScheduler(
        queue="up",
        id="s",
        repeat={"pattern": "0 0 4 * * *", "tz": "Asia/Tokyo"},
        template={"name": "s3", "data": {"v": 4}},
    )
    assert pending(r, author.prefix, "up") == [cron["id"]]
    fields = r.hgetall(f"{key}:repeat:s")
    assert "every" not in fields and fields["pattern"] == "0 0 4 * * *" and fields["ic"] == "1"
    node_view, flowjobs_view = views("up", *sides)
    assert node_view == flowjobs_view
    assert node_view[0]["name"] == "s3" and node_view[0]["template"] == {"data": {"v": 4}}
    # the same pattern again: the same slot, no collision
    again = author.producer.upsertJobScheduler(
        queue="up",
        id="s",
        repeat={"pattern": "0 0 4 * * *", "tz": "Asia/Tokyo"},
        template={"name": "s3", "data": {"v": 5}},
    )
    assert again["id"] == cron["id"] and pending(r, author.prefix, "up") == [cron["id"]]
    assert r.zcard(f"{key}:repeat") == 1


def test_upserts_while_running_leave_one_run_per_slot(
    sides: tuple[Side, Side], r: redis.Redis
) -> None:
    author, runner = sides
    repeat = {"every": 250}
    author.producer.upsertJobScheduler(queue="live", id="r", repeat=repeat, template={"name": "r"})
    worker = runner.worker({"queue": "live"})
    for count in (2, 4, 6):
        worker.expect_count("completed", count, timeout=30)
        # re-declaring the running scheduler (as a deploy does) on both sides
        for side in sides:
            side.producer.upsertJobScheduler(
                queue="live", id="r", repeat=repeat, template={"name": "r", "data": {"c": count}}
            )
        assert len(pending(r, author.prefix, "live")) <= 1
    # later runs take the template of the last upsert
    worker.wait_for(lambda line: line.get("data") == {"c": 6}, 30, "a run with the new data")
    assert author.producer.removeJobScheduler(queue="live", id="r") is True
    taken = [line["id"] for line in worker.where("process")]
    assert len(taken) == len(set(taken)), f"an iteration ran twice: {sorted(taken)}"
    slots = sorted(millis_of(job_id, "r") for job_id in taken)
    assert all((b - a) % 250 == 0 for a, b in zip(slots, slots[1:], strict=False))


def normalised(r: redis.Redis, key: str) -> dict[str, Any]:
    """A job or scheduler hash with its times and time-derived ids blanked out."""
    fields: dict[str, Any] = r.hgetall(key)
    for name in ("timestamp", "processedOn", "finishedOn", "offset", "delay"):
        if name in fields:
            assert int(fields[name]) >= 0
            fields[name] = "<ms>" if name != "delay" or fields[name] != "0" else "0"
    if "opts" in fields:
        opts = json.loads(fields["opts"])
        for name in ("timestamp", "delay", "prevMillis"):
            if name in opts:
                assert isinstance(opts[name], int) and opts[name] >= 0
                opts[name] = "<ms>"
        if "jobId" in opts:
            opts["jobId"] = opts["jobId"].rsplit(":", 1)[0]
        fields["opts"] = opts
    return fields


def test_scheduler_keys_are_written_alike(
    node: NodeHarness, flowjobs: FlowjobsHarness, r: redis.Redis
) -> None:
    """The same upserts and runs, all-Node on one queue and all-flowjobs on another."""
    written = {}
    template = {"name": "t", "data": {"n": 1}, "opts": {"attempts": 2, "removeOnFail": 5}}
    for side in (node, flowjobs):
        queue = f"lay-{side.side}"
        side.producer.upsertJobScheduler(
            queue=queue,
            id="cron",
            repeat={"pattern": "0 0 9 * * *", "tz": "Asia/Tokyo"},
            template=template,
        )
        side.producer.upsertJobScheduler(
            queue=queue, id="ev", repeat={"every": 300, "limit": 2}, template=template
        )
        worker = side.worker({"queue": queue})
        worker.expect_count("completed", 2, timeout=30)
        stop(worker)
        key = f"{side.prefix}:{queue}"
        jobs = sorted(r.zrange(f"{key}:completed", 0, -1) + r.zrange(f"{key}:delayed", 0, -1))
        written[side.side] = {
            "repeat": sorted(r.zrange(f"{key}:repeat", 0, -1)),
            "cron": normalised(r, f"{key}:repeat:cron"),
            "ev": normalised(r, f"{key}:repeat:ev"),
            "jobs": [normalised(r, f"{key}:{job_id}") for job_id in jobs],
            "id": r.get(f"{key}:id"),
        }
    assert written["node"] == written["flowjobs"]
