"""INSERT ... ON CONFLICT for the mirror's rows, written per database."""

from __future__ import annotations

import json
from typing import Any

from django.db import connection

from ..models import JobRecord

DB_CHUNK = 500


def _column_defaults() -> dict[str, Any]:
    return {
        f.attname: f.get_default() for f in JobRecord._meta.concrete_fields if not f.primary_key
    }


def upsert(rows: list[dict[str, Any]], update_fields: list[str]) -> None:
    """INSERT ... ON CONFLICT (prefix, queue, job_id) DO UPDATE the given columns.

    Written by hand for SQLite and PostgreSQL: the ORM's bulk_create compiles every
    value through the generic machinery, which dominated the mirror's cost. Other
    databases get bulk_create.
    """
    if not rows:
        return
    if connection.vendor not in ("sqlite", "postgresql"):
        JobRecord.objects.bulk_create(
            [JobRecord(**{**_column_defaults(), **row}) for row in rows],
            batch_size=DB_CHUNK,
            update_conflicts=True,
            unique_fields=["prefix", "queue", "job_id"],
            update_fields=update_fields,
        )
        return
    fields = [f for f in JobRecord._meta.concrete_fields if not f.primary_key]
    defaults = _column_defaults()
    quote = connection.ops.quote_name
    table = quote(JobRecord._meta.db_table)
    columns = ", ".join(quote(f.column) for f in fields)
    updates = ", ".join(
        f"{quote(JobRecord._meta.get_field(name).column)} = EXCLUDED."
        f"{quote(JobRecord._meta.get_field(name).column)}"
        for name in update_fields
    )
    conflict = f"ON CONFLICT ({', '.join(map(quote, ('prefix', 'queue', 'job_id')))})"
    adapters = [_adapter(f) for f in fields]
    # A stable order: concurrent writers (projector, `syncjobs --once`) then lock rows
    # in the same order and cannot deadlock each other.
    rows = sorted(rows, key=lambda row: (row["prefix"], row["queue"], row["job_id"]))
    values = [
        [
            adapt(value) if adapt is not None and value is not None else value
            for value, adapt in (
                (row[f.attname] if f.attname in row else defaults[f.attname], adapt)
                for f, adapt in zip(fields, adapters, strict=True)
            )
        ]
        for row in rows
    ]
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            # One array parameter per column: the statement stays small whatever the
            # batch size (a VALUES list of thousands of placeholders is slow to bind).
            casts = ", ".join(f"%s::{_pg_array_type(f)}" for f in fields)
            sql = (
                f"INSERT INTO {table} ({columns}) SELECT * FROM unnest({casts}) "
                f"{conflict} DO UPDATE SET {updates}"
            )
            for start in range(0, len(values), 2000):
                chunk = values[start : start + 2000]
                cursor.execute(sql, [list(column) for column in zip(*chunk, strict=True)])
            return
        max_params = connection.features.max_query_params or 999
        per_statement = max(1, min(DB_CHUNK, max_params // len(fields)))
        placeholder = "(" + ", ".join(["%s"] * len(fields)) + ")"
        for start in range(0, len(values), per_statement):
            chunk = values[start : start + per_statement]
            sql = (
                f"INSERT INTO {table} ({columns}) VALUES "
                + ", ".join([placeholder] * len(chunk))
                + f" {conflict} DO UPDATE SET {updates}"
            )
            cursor.execute(sql, [value for row in chunk for value in row])


def _adapter(f: Any) -> Any:
    """How to turn a Python value of field ``f`` into a database parameter."""
    kind = f.get_internal_type()
    if kind == "JSONField":
        if connection.vendor == "postgresql":
            return lambda value: json.dumps(value, cls=f.encoder)  # cast to jsonb in SQL
        return lambda value: connection.ops.adapt_json_value(value, f.encoder)
    if kind == "DateTimeField":
        return connection.ops.adapt_datetimefield_value
    return None


def _pg_array_type(f: Any) -> str:
    base = f.db_type(connection).split(" CHECK", 1)[0]
    return f"{base}[]"
