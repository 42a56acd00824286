"""INSERT ... ON CONFLICT for the mirror's rows, written per database.

Rows hold database values, made once by the code that builds them: JSON columns as
JSON text (see ``parsing.json_text``), datetimes as ``datetime_writer`` and
``db_datetime`` write them. The statements then pass them on untouched.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Callable, Iterator
from operator import itemgetter
from typing import Any

from django.conf import settings as django_settings
from django.db import connection
from django.utils import timezone

from ..models import JobRecord
from .parsing import timestamp_ms, utc_moment

DB_CHUNK = 500

_FIELDS = [f for f in JobRecord._meta.concrete_fields if not f.primary_key]
_COLUMN_NAMES = [f.attname for f in _FIELDS]
JSON_COLUMNS = frozenset(f.attname for f in _FIELDS if f.get_internal_type() == "JSONField")


def _database_defaults() -> dict[str, Any]:
    """Each column's default, as the database value a row would carry."""
    defaults = {}
    for f in _FIELDS:
        value = f.get_default()
        if f.attname in JSON_COLUMNS and value is not None:
            value = json.dumps(value)
        defaults[f.attname] = value
    return defaults


_DEFAULTS = _database_defaults()


def datetime_writer() -> Callable[[Any], Any]:
    """A function: millisecond timestamp -> the value this connection's DateTimeFields take.

    The value the ORM would write for ``parsing.to_datetime(ms)``, as text on SQLite and
    PostgreSQL (see ``upsert``): on SQLite the text its adapter makes (naive, in the
    connection's zone, or the default zone without USE_TZ); on PostgreSQL with USE_TZ the
    moment in UTC with its offset, without it naive in the default zone (the session's
    zone, as for a naive datetime the ORM binds); elsewhere the datetime itself. Settings
    are read once, here.
    """
    use_tz = django_settings.USE_TZ
    vendor = connection.vendor
    as_text = vendor in ("sqlite", "postgresql")
    if use_tz:
        zone = connection.timezone if vendor == "sqlite" else None
    else:
        zone = timezone.get_default_timezone()
    to_utc = zone is not None and str(zone) == "UTC"  # datetime.UTC or ZoneInfo("UTC")
    if vendor == "sqlite" and to_utc:
        return _utc_text_writer("")
    if vendor == "postgresql" and zone is None:
        return _utc_text_writer("+00:00")

    def write(ms: Any) -> Any:
        moment = utc_moment(ms)
        if moment is None or zone is None:
            return moment
        if to_utc:
            moment = moment.replace(tzinfo=None)
        else:
            moment = moment.astimezone(zone).replace(tzinfo=None)
        return str(moment) if as_text else moment

    return write


# Below this many ms (year 2242) a timestamp's float seconds round to its exact microsecond,
# so the text can be built from the integer: the same text str(datetime) gives.
_EXACT_MS_LIMIT = 2**33 * 1000


def _utc_text_writer(offset: str) -> Callable[[Any], Any]:
    """``datetime_writer`` for a UTC moment as naive text followed by ``offset``: the
    text of each second is made once."""
    seconds_text: dict[int, str] = {}

    def write(ms: Any) -> Any:
        value = timestamp_ms(ms)
        if value is None:
            return None
        if value >= _EXACT_MS_LIMIT:
            moment = utc_moment(value)
            return f"{moment.replace(tzinfo=None)}{offset}"
        seconds, millis = divmod(value, 1000)
        text = seconds_text.get(seconds)
        if text is None:
            if len(seconds_text) > 10_000:
                seconds_text.clear()
            text = seconds_text[seconds] = str(_EPOCH + datetime.timedelta(seconds=seconds))
        return f"{text}.{millis:03d}000{offset}" if millis else f"{text}{offset}"

    return write


_EPOCH = datetime.datetime(1970, 1, 1)


def db_datetime(value: datetime.datetime) -> Any:
    """A datetime as the row carries it (``timezone.now()`` for synced_at, say)."""
    if connection.vendor == "sqlite":
        return connection.ops.adapt_datetimefield_value(value)
    if connection.vendor == "postgresql":
        return str(value)  # as datetime_writer writes them: text (see upsert)
    return value


def upsert(rows: list[dict[str, Any]], update_fields: list[str]) -> None:
    """INSERT ... ON CONFLICT (prefix, queue, job_id) DO UPDATE the given columns.

    Written by hand for SQLite and PostgreSQL: the ORM's bulk_create compiles every
    value through the generic machinery, which dominated the mirror's cost. Other
    databases get bulk_create.
    """
    if not rows:
        return
    if connection.vendor not in ("sqlite", "postgresql"):
        _bulk_create(rows, update_fields)
        return
    quote = connection.ops.quote_name
    table = quote(JobRecord._meta.db_table)
    columns = ", ".join(quote(f.column) for f in _FIELDS)
    updates = ", ".join(
        f"{quote(JobRecord._meta.get_field(name).column)} = EXCLUDED."
        f"{quote(JobRecord._meta.get_field(name).column)}"
        for name in update_fields
    )
    conflict = f"ON CONFLICT ({', '.join(map(quote, ('prefix', 'queue', 'job_id')))})"
    # A stable order: concurrent writers (projector, `syncjobs --once`) then lock rows
    # in the same order and cannot deadlock each other.
    rows = sorted(rows, key=itemgetter("prefix", "queue", "job_id"))
    if connection.vendor == "postgresql":
        record, selected = _pg_record()
        # The rows as one JSON parameter, read back by json_to_recordset: psycopg binds a
        # list parameter (an array per column, say) element by element in Python, which
        # cost the mirror a third of its CPU; json.dumps is C. The statement stays small
        # whatever the batch size.
        sql = (
            f"INSERT INTO {table} ({columns}) SELECT {selected} "
            f"FROM json_to_recordset(%s::json) AS job({record}) "
            f"{conflict} DO UPDATE SET {updates}"
        )
        with connection.cursor() as cursor:
            for text in _json_batches(rows):
                cursor.execute(sql, [text])
        return
    in_column_order = itemgetter(*_COLUMN_NAMES)
    values = [in_column_order({**_DEFAULTS, **row}) for row in rows]
    max_params = connection.features.max_query_params or 999
    per_statement = max(1, min(DB_CHUNK, max_params // len(_FIELDS)))
    placeholder = "(" + ", ".join(["?"] * len(_FIELDS)) + ")"
    # The DB-API connection with ? placeholders: Django's cursor would rewrite %s in
    # every (long) statement. Its errors are still Django's (wrap_database_errors).
    connection.ensure_connection()
    with connection.wrap_database_errors:
        for start in range(0, len(values), per_statement):
            chunk = values[start : start + per_statement]
            sql = (
                f"INSERT INTO {table} ({columns}) VALUES "
                + ", ".join([placeholder] * len(chunk))
                + f" {conflict} DO UPDATE SET {updates}"
            )
            connection.connection.execute(sql, [value for row in chunk for value in row])


def _bulk_create(rows: list[dict[str, Any]], update_fields: list[str]) -> None:
    """The ORM's way, for other databases: JSON text decoded back to the Python value."""
    models = []
    for row in rows:
        values = {**_DEFAULTS, **row}
        for name in JSON_COLUMNS:
            if values[name] is not None:
                values[name] = json.loads(values[name])
        models.append(JobRecord(**values))
    JobRecord.objects.bulk_create(
        models,
        batch_size=DB_CHUNK,
        update_conflicts=True,
        unique_fields=["prefix", "queue", "job_id"],
        update_fields=update_fields,
    )


# Rows a PostgreSQL upsert statement takes at most, and the JSON text it sends at most
# (PostgreSQL refuses a value over 1 GB; jobs with large data fill that in fewer rows).
PG_STATEMENT_ROWS = 2000
PG_STATEMENT_BYTES = 64 * 1024 * 1024


def _json_batches(rows: list[dict[str, Any]]) -> Iterator[str]:
    """The rows as JSON arrays (ASCII: a text's length is its size) of at most
    PG_STATEMENT_ROWS rows and PG_STATEMENT_BYTES, in order (a larger row goes alone).
    A batch over the size is made again as two halves: one json.dumps a batch, not one
    a row, in the common case."""
    pending = [
        rows[start : start + PG_STATEMENT_ROWS] for start in range(0, len(rows), PG_STATEMENT_ROWS)
    ]
    while pending:
        batch = pending.pop(0)
        text = json.dumps([{**_DEFAULTS, **row} for row in batch], default=_json_datetime)
        if len(text) > PG_STATEMENT_BYTES and len(batch) > 1:
            half = len(batch) // 2
            pending[:0] = [batch[:half], batch[half:]]
            continue
        yield text


def _pg_record() -> tuple[str, str]:
    """``upsert``'s json_to_recordset column list and the SELECT list made of it: JSON
    columns come as their JSON text, cast to jsonb."""
    quote = connection.ops.quote_name
    record, selected = [], []
    for f in _FIELDS:
        if f.attname in JSON_COLUMNS:
            record.append(f"{quote(f.attname)} text")
            selected.append(f"job.{quote(f.attname)}::jsonb")
        else:
            record.append(f"{quote(f.attname)} {f.db_type(connection).split(' CHECK', 1)[0]}")
            selected.append(f"job.{quote(f.attname)}")
    return ", ".join(record), ", ".join(selected)


def _json_datetime(value: Any) -> str:
    """A row's datetime in the JSON of ``upsert``'s PostgreSQL statement (ISO 8601, with
    its offset when it has one: PostgreSQL reads it as the ORM would have bound it)."""
    if isinstance(value, datetime.datetime):
        return value.isoformat()
    raise TypeError(f"the mirror's upsert cannot send {type(value).__name__} {value!r}")
