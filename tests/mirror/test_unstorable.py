"""A job the mirror cannot store never blocks the others (issue 14, finding 4).

The bad jobs are written the way a foreign producer (Node BullMQ, another tool)
would: a job hash, the wait list and the events stream, straight into Redis.
"""

from __future__ import annotations

import json
import logging

import pytest
from django.core.management import call_command

from flowjobs.mirror import reconcile
from flowjobs.mirror.parsing import MAX_JSON_DEPTH
from flowjobs.models import JobRecord, UnstorableJob

pytestmark = pytest.mark.django_db

LONG_A = "y" * 255 + "-first"
LONG_B = "y" * 255 + "-second"  # the same as LONG_A up to character 255
BAD_IDS = ["nul\x00id", "x" * 300, LONG_A, LONG_B]


def _foreign_job(rclient, prefix: str, queue: str, job_id: str, **fields: str) -> None:
    rclient.hset(
        f"{prefix}:{queue}:{job_id}",
        mapping={
            "name": "foreign",
            "data": "{}",
            "opts": "{}",
            "timestamp": "1700000000000",
            **fields,
        },
    )
    rclient.lpush(f"{prefix}:{queue}:wait", job_id)
    rclient.xadd(f"{prefix}:{queue}:events", {"event": "added", "jobId": job_id, "name": "n"})
    rclient.xadd(f"{prefix}:{queue}:events", {"event": "waiting", "jobId": job_id})


def _mirror_warnings(caplog) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "flowjobs.mirror" and r.levelno == logging.WARNING
    ]


def test_bad_job_ids_are_recorded_and_the_rest_is_mirrored(
    make_queue, make_projector, rclient, prefix, caplog
):
    _foreign_job(rclient, prefix, "bad", "before")
    for job_id in BAD_IDS:
        _foreign_job(rclient, prefix, "bad", job_id)
    _foreign_job(rclient, prefix, "bad", "after")
    good = make_queue("good")
    good.add_bulk([{"name": "n", "data": {"i": i}} for i in range(50)])

    with caplog.at_level(logging.WARNING, logger="flowjobs.mirror"):
        make_projector().catch_up()

    assert JobRecord.objects.filter(queue="good").count() == 50
    assert set(JobRecord.objects.filter(queue="bad").values_list("job_id", flat=True)) == {
        "before",
        "after",
    }
    # Nothing was cut to fit: no row holds the first 255 characters of a long id.
    assert not JobRecord.objects.filter(job_id__startswith="yyy").exists()
    assert not JobRecord.objects.filter(job_id__startswith="xxx").exists()

    recorded = {row.job_id: row for row in UnstorableJob.objects.filter(queue="bad")}
    assert set(recorded) == {"nul\\x00id", "x" * 300, LONG_A, LONG_B}
    assert "NUL" in recorded["nul\\x00id"].reason
    assert "300 characters" in recorded["x" * 300].reason
    assert "261 characters" in recorded[LONG_A].reason
    assert len(_mirror_warnings(caplog)) == 4  # one line per job

    # Seen again (a reconcile, more events): no new rows, no new log lines.
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="flowjobs.mirror"):
        rclient.xadd(f"{prefix}:bad:events", {"event": "progress", "jobId": "nul\x00id"})
        make_projector().catch_up()
        reconcile(rclient, prefix)
    assert UnstorableJob.objects.count() == 4
    assert _mirror_warnings(caplog) == []

    # The projector kept going: later jobs of both queues are mirrored.
    later = good.add("later", {})
    _foreign_job(rclient, prefix, "bad", "later")
    make_projector().catch_up()
    assert JobRecord.objects.filter(queue="good", job_id=later.id).exists()
    assert JobRecord.objects.filter(queue="bad", job_id="later").exists()


def test_syncjobs_once_succeeds_beside_bad_job_ids(
    flowjobs_settings, make_queue, rclient, prefix, capsys
):
    for job_id in BAD_IDS:
        _foreign_job(rclient, prefix, "bad", job_id)
    make_queue("good").add("n", {})

    call_command("syncjobs", "--once")  # raises (exit 1) if one job stops it

    out = capsys.readouterr().out
    assert "4 unstorable" in out
    assert JobRecord.objects.filter(queue="good").count() == 1
    assert UnstorableJob.objects.filter(queue="bad").count() == 4


def test_a_queue_whose_name_cannot_be_stored_does_not_stop_the_others(
    make_queue, make_projector, rclient, prefix, caplog
):
    _foreign_job(rclient, prefix, "q\x00nul", "1")
    _foreign_job(rclient, prefix, "q" * 300, "1")
    make_queue("good").add("n", {})

    with caplog.at_level(logging.WARNING, logger="flowjobs.mirror"):
        make_projector().catch_up()
        make_projector().catch_up()

    assert JobRecord.objects.filter(queue="good").count() == 1
    queues = set(UnstorableJob.objects.values_list("queue", "job_id"))
    assert queues == {("q\\x00nul", ""), ("q" * 300, "")}
    assert len(_mirror_warnings(caplog)) == 2


def test_a_child_whose_parent_key_cannot_be_stored_is_recorded(make_projector, rclient, prefix):
    parent_key = f"{prefix}:bad:{'p' * 300}"
    _foreign_job(
        rclient,
        prefix,
        "bad",
        "child",
        parentKey=parent_key,
        parent=json.dumps({"id": "p" * 300, "queueKey": f"{prefix}:bad"}),
    )
    _foreign_job(rclient, prefix, "bad", "plain")

    make_projector().catch_up()

    assert list(JobRecord.objects.values_list("job_id", flat=True)) == ["plain"]
    child = UnstorableJob.objects.get(job_id="child")
    assert "parent" in child.reason


def test_values_the_database_refuses_are_found_one_job_at_a_time(make_projector, rclient, prefix):
    # 10**30 fits no integer column: the database refuses the batch; the mirror
    # then writes job by job and records only the job it refuses.
    _foreign_job(rclient, prefix, "q", "huge", delay="1e30")
    _foreign_job(rclient, prefix, "q", "fine")
    # A lone surrogate escape is valid JSON text PostgreSQL's jsonb refuses: kept as text.
    _foreign_job(rclient, prefix, "q", "surrogate", data='{"a": "\\ud800"}')

    make_projector().catch_up()

    rows = {row.job_id: row for row in JobRecord.objects.filter(queue="q")}
    assert set(rows) == {"fine", "surrogate"}
    assert rows["surrogate"].invalid_json == ["data"]
    assert rows["surrogate"].data == '{"a": "\\ud800"}'
    assert "refused" in UnstorableJob.objects.get(job_id="huge").reason


@pytest.mark.parametrize("depth", [400, 900, 5_000, 100_000])
def test_deeply_nested_json_never_stops_the_mirror(depth, make_projector, rclient, prefix):
    nested = "[" * depth + "]" * depth
    _foreign_job(rclient, prefix, "q", "deep", data=nested, opts=nested)
    _foreign_job(rclient, prefix, "q", "fine")

    make_projector().catch_up()
    reconcile(rclient, prefix)

    rows = {row.job_id: row for row in JobRecord.objects.filter(queue="q")}
    assert set(rows) == {"deep", "fine"}
    assert not UnstorableJob.objects.exists()
    deep = rows["deep"]
    if depth <= MAX_JSON_DEPTH:
        assert deep.invalid_json == [] and isinstance(deep.data, list)
    else:  # kept as raw text, on every database
        assert deep.invalid_json == ["data", "opts"] and deep.data == nested


def test_raw_bytes_in_every_field_never_stop_the_mirror(make_projector, rclient, prefix):
    raw = b"\xff\xfe\x00\xc3(\xed\xa0\x80"
    fields = ("name", "data", "opts", "returnvalue", "progress", "stacktrace")
    _foreign_job(rclient, prefix, "q", "bytes", **dict.fromkeys(fields, raw))
    rclient.hset(f"{prefix}:q:bytes", mapping={"failedReason": raw, "pb": raw})
    _foreign_job(rclient, prefix, "q", "fine")

    make_projector().catch_up()

    rows = {row.job_id: row for row in JobRecord.objects.filter(queue="q")}
    assert set(rows) == {"bytes", "fine"}
    assert "\ufffd" in rows["bytes"].name
    assert set(rows["bytes"].invalid_json) == {
        "data",
        "opts",
        "returnvalue",
        "progress",
        "stacktrace",
    }
