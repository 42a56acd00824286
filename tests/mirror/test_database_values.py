"""The mirror writes database values itself (issue 17): the same values the ORM wrote.

JSON columns get the text Redis holds once parse_json accepted it, datetimes the text
(SQLite) or datetime the ORM's adapter would have made, and the children counts come
from one GROUP BY. Each is checked here against what the ORM stores and reads back.
"""

from __future__ import annotations

import json

import pytest
from django.db import connection
from django.test import override_settings
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from flowjobs.mirror import upsert as upsert_module
from flowjobs.mirror.observation import Observation
from flowjobs.mirror.parsing import MAX_JSON_DEPTH, json_text, parse_json, to_datetime
from flowjobs.mirror.roots import RootResolver
from flowjobs.mirror.store import _refresh_children_counts, store
from flowjobs.mirror.upsert import datetime_writer, db_datetime
from flowjobs.models import JobRecord

pytestmark = pytest.mark.django_db

JSON_TEXTS = [
    '{"i":1,"user":"someone@example.com"}',
    '{"s":"é日本😀"}',
    '{"s":"\\u00e9\\ud83d\\ude00 \\"quoted\\" \\\\ \\/"}',
    '"tab\\tnew\\nline"',
    '{"n":123456789012345678901234567890,"m":-98765432109876543210}',
    "[-0, -0.0, 1.50, 123.0, 0.1000000000000000055511151231257827]",
    "[1e5, 1E-5, 2.5e+3, 1.7976931348623157e308, 5e-324]",
    '{"a":[{"b":[1,{"c":null}]}],"d":{}}',
    '{"a":1,"a":2}',
    ' {"a": 1} ',
    '"x\\u0000y"',
    '{"k\\u0000":"\\u0000"}',
    "null",
    " null ",
    "[]",
    "{}",
    "0",
    "1",
    "true",
    "false",
    '""',
    "[null]",
    '"\\ud800"',
    '["\\udc00x"]',
    "{bad",
    "NaN",
    "[Infinity]",
    "[-Infinity]",
    "1e400",
    "[1, 2] extra",
    "\ufeff{}",
    "[" * (MAX_JSON_DEPTH + 1) + "]" * (MAX_JSON_DEPTH + 1),
    "[" * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH,
    "plain text",
]


def _same(a, b) -> bool:
    """Equal values of the same JSON types (1 and 1.0 differ)."""
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def _stored_as_before(job_id: str, raw: str):
    """What the ORM stored and reads back for parse_json's value (the mirror's old way)."""
    value, _ok = parse_json(raw)
    JobRecord.objects.create(
        prefix="ref", queue="q", job_id=job_id, key=f"ref:q:{job_id}", data=value,
        returnvalue=value, synced_at=timezone.now(),
    )  # fmt: skip
    return JobRecord.objects.get(prefix="ref", job_id=job_id).data


def test_json_text_stores_what_the_orm_stored_for_the_parsed_value(rclient):
    observations = []
    for index, raw in enumerate(JSON_TEXTS):
        fields = {"name": "n", "data": raw, "timestamp": "1700000000000"}
        observations.append(Observation("bull", "q", str(index), fields=fields, state="waiting"))
    written = store(rclient, observations, RootResolver(rclient))
    assert written.written == len(JSON_TEXTS) and written.unstorable == 0
    for index, raw in enumerate(JSON_TEXTS):
        row = JobRecord.objects.get(prefix="bull", job_id=str(index))
        before = _stored_as_before(str(index), raw)
        assert _same(row.data, before), raw
        assert json_text(raw)[1] is parse_json(raw)[1], raw
        assert row.invalid_json == ([] if parse_json(raw)[1] else ["data"]), raw


def test_event_values_of_a_gone_job_store_what_the_orm_stored(rclient):
    observations = []
    for index, raw in enumerate(JSON_TEXTS):
        obs = Observation("bull", "gone", str(index), state="completed", returnvalue=raw)
        observations.append(obs)
    store(rclient, observations, RootResolver(rclient))
    for index, raw in enumerate(JSON_TEXTS):
        row = JobRecord.objects.get(prefix="bull", queue="gone", job_id=str(index))
        assert _same(row.returnvalue, _stored_as_before(f"gone-{index}", raw)), raw
        assert row.invalid_json == ([] if parse_json(raw)[1] else ["returnvalue"]), raw
        assert row.in_redis is False


TIMESTAMPS = [
    None,
    "",
    "abc",
    "0",
    "-5",
    "1",
    "999",
    "1000",
    "1700000000000",
    "1764757000123",
    "1764757000123.9",
    "2e12",
    1764757000001,
    str(2**33 * 1000 - 1),
    str(2**33 * 1000 + 123),
    "253402300799999",  # 9999-12-31 23:59:59.999, the last one Python can hold
]


def _old_value(ms):
    """The parameter the ORM's adapter made of parsing.to_datetime(ms)."""
    return connection.ops.adapt_datetimefield_value(to_datetime(ms))


def _assert_same_moment(new, old, what):
    """On SQLite the writer's text is the adapter's, as SQLite compares and orders this
    text; on PostgreSQL the writer's text (the upsert sends rows as JSON) is the moment
    the adapter's datetime is, as the database reads both."""
    if connection.vendor != "postgresql" or old is None:
        assert new == old and type(new) is type(old), what
        return
    assert isinstance(new, str), what
    with connection.cursor() as cursor:
        cursor.execute("SELECT %s::timestamptz, %s::timestamptz", [new, old])
        read_new, read_old = cursor.fetchone()
    assert read_new == read_old, what


@pytest.mark.parametrize(
    "overrides",
    [
        {"USE_TZ": True, "TIME_ZONE": "UTC"},
        {"USE_TZ": True, "TIME_ZONE": "Europe/Paris"},
        {"USE_TZ": False, "TIME_ZONE": "UTC"},
        {"USE_TZ": False, "TIME_ZONE": "America/New_York"},
    ],
)
def test_datetimes_are_written_as_the_orm_adapter_wrote_them(overrides):
    with override_settings(**overrides):
        write = datetime_writer()
        for ms in TIMESTAMPS:
            new, old = write(ms), _old_value(ms)
            _assert_same_moment(new, old, ms)
        now = timezone.now()
        _assert_same_moment(db_datetime(now), connection.ops.adapt_datetimefield_value(now), now)
        for ms in ("1e20", str(10**18)):  # beyond year 9999: the same error as before
            with pytest.raises(Exception) as old_error:
                _old_value(ms)
            with pytest.raises(old_error.type):
                write(ms)


@pytest.mark.parametrize("use_tz", [True, False])
def test_datetimes_read_back_as_the_orm_reads_to_datetime(rclient, use_tz):
    with override_settings(USE_TZ=use_tz):
        fields = {
            "name": "n",
            "timestamp": "1764757000123",
            "processedOn": "1764757000000",
            "finishedOn": "1764757001999",
        }
        store(rclient, [Observation("bull", "q", "1", fields=fields, state="completed")],
              RootResolver(rclient))  # fmt: skip
        row = JobRecord.objects.get(prefix="bull", job_id="1")
        assert row.created_at == to_datetime("1764757000123")
        assert row.processed_at == to_datetime("1764757000000")
        assert row.finished_at == to_datetime("1764757001999")
        # Ordering and range filters compare the stored values themselves.
        assert JobRecord.objects.filter(
            created_at__gt=to_datetime("1764757000122"),
            created_at__lt=to_datetime("1764757000124"),
            processed_at=to_datetime("1764757000000"),
        ).exists()


def test_children_counts_match_the_rows_whatever_they_held():
    now = timezone.now()

    def row(job_id: str, parent: str = "", count: int = 0) -> JobRecord:
        return JobRecord(
            prefix="bull", queue="q", job_id=job_id, key=f"bull:q:{job_id}",
            parent_key=parent, children_count=count, synced_at=now,
        )  # fmt: skip

    JobRecord.objects.bulk_create(
        [
            row("parent", count=0),
            row("a", "bull:q:parent"),
            row("b", "bull:q:parent"),
            row("c", "bull:q:other-parent"),
            row("other-parent", count=7),  # stale: it has one child
            row("moved-away", count=3),  # stale: its children left
            row("leaf", count=0),
        ]
    )
    keys = {f"bull:q:{name}" for name in ("parent", "other-parent", "moved-away", "leaf", "a")}
    _refresh_children_counts(keys | {"bull:q:not-mirrored"}, set())
    counts = dict(JobRecord.objects.values_list("job_id", "children_count"))
    assert counts == {
        "parent": 2,
        "a": 0,
        "b": 0,
        "c": 0,
        "other-parent": 1,
        "moved-away": 0,
        "leaf": 0,
    }


def test_rows_just_created_are_updated_only_when_they_have_children():
    """A row the batch created holds 0 children already: one with a child row (stored
    before its parent) is counted, the childless ones cost no UPDATE."""
    now = timezone.now()
    JobRecord.objects.bulk_create(
        [
            JobRecord(prefix="bull", queue="q", job_id=job_id, key=f"bull:q:{job_id}",
                      parent_key=parent, synced_at=now)
            for job_id, parent in (("child", "bull:q:parent"), ("parent", ""), ("leaf", ""))
        ]
    )  # fmt: skip
    created = {"bull:q:parent", "bull:q:leaf"}
    with CaptureQueriesContext(connection) as queries:
        _refresh_children_counts(created, created)
    counts = dict(JobRecord.objects.values_list("job_id", "children_count"))
    assert counts == {"child": 0, "parent": 1, "leaf": 0}
    updates = [query["sql"] for query in queries if query["sql"].startswith("UPDATE")]
    assert len(updates) == 1 and "children_count" in updates[0]


def test_large_jobs_are_written_in_statements_under_the_size_budget(rclient, monkeypatch):
    """On PostgreSQL a batch's rows go as one JSON text a statement, and PostgreSQL refuses
    a value over 1 GB: a batch over PG_STATEMENT_BYTES is split in halves until each part
    fits, and every row is written whole."""
    monkeypatch.setattr(upsert_module, "PG_STATEMENT_BYTES", 20_000)
    pad = "x" * 3000
    observations = [
        Observation(
            "bull",
            "big",
            str(index),
            fields={"name": "n", "data": json.dumps({"i": index, "pad": pad}), "timestamp": "1"},
            state="waiting",
        )
        for index in range(40)
    ]
    with CaptureQueriesContext(connection) as queries:
        written = store(rclient, observations, RootResolver(rclient))
    assert written.written == 40 and written.unstorable == 0
    stored = {row.job_id: row.data for row in JobRecord.objects.filter(queue="big")}
    assert stored == {str(index): {"i": index, "pad": pad} for index in range(40)}
    if connection.vendor == "postgresql":
        upserts = [q["sql"] for q in queries.captured_queries if "json_to_recordset" in q["sql"]]
        # 40 rows of about 3.3 KB: halved to 8 statements of 5 (the SQL itself is ~2 KB)
        assert len(upserts) == 8
        assert all(len(sql) < 20_000 + 4_000 for sql in upserts)
