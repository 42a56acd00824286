"""Turning a batch of observations into mirror rows."""

from __future__ import annotations

import datetime
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import redis
from django.db import DataError, IntegrityError, connection, transaction
from django.db.models import Count
from django.utils import timezone

from ..engine.scripts import hgetall_many
from ..models import JobRecord, JobState
from .observation import STATE_STRUCTURES, Observation, event_values, row_from_hash
from .parsing import to_int
from .roots import RootResolver
from .unstorable import queue_problem, row_problem, text_problem
from .unstorable import record as record_unstorable
from .upsert import DB_CHUNK, datetime_writer, db_datetime, upsert

_FULL_UPDATE_FIELDS = [
    "key",
    "name",
    "state",
    "parent_key",
    "parent_queue",
    "parent_job_id",
    "root_key",
    "data",
    "opts",
    "returnvalue",
    "progress",
    "failed_reason",
    "stacktrace",
    "invalid_json",
    "priority",
    "delay",
    "attempts_made",
    "attempts_started",
    "stalled_counter",
    "processed_by",
    "created_at",
    "processed_at",
    "finished_at",
    "synced_at",
    "in_redis",
]


@dataclass
class _Existing:
    pk: int
    state: str
    parent_key: str
    root_key: str
    invalid_json: list[str]


_EXISTING_COLUMNS = ("id", "prefix", "queue", "job_id", "state", "parent_key", "root_key")


def _fetch_existing(keys: list[str]) -> dict[tuple[str, str, str], _Existing]:
    # Plain SQL: the ORM's per-row conversions cost more than the query here.
    quote = connection.ops.quote_name
    field = JobRecord._meta.get_field
    columns = ", ".join(quote(field(name).column) for name in (*_EXISTING_COLUMNS, "invalid_json"))
    table = quote(JobRecord._meta.db_table)
    existing: dict[tuple[str, str, str], _Existing] = {}
    with connection.cursor() as cursor:
        for start in range(0, len(keys), DB_CHUNK):
            chunk = keys[start : start + DB_CHUNK]
            cursor.execute(
                f"SELECT {columns} FROM {table} WHERE {quote(field('key').column)} IN "
                f"({', '.join(['%s'] * len(chunk))})",
                chunk,
            )
            for pk, prefix, queue, job_id, state, parent_key, root_key, invalid in cursor:
                existing[(prefix, queue, job_id)] = _Existing(
                    pk, state, parent_key, root_key, _json_list(invalid)
                )
    return existing


def _json_list(stored: Any) -> list[str]:
    """invalid_json as the database returns it (JSON text, or already decoded)."""
    if stored is None or stored == "[]":
        return []
    return list(json.loads(stored) if isinstance(stored, str) else stored)


def _lookup_states(
    client: redis.Redis, observations: list[Observation]
) -> dict[tuple[str, str, str], str]:
    """Exact state of jobs the events left ambiguous (rare: no state-moving event seen)."""
    pipe = client.pipeline(transaction=False)
    for obs in observations:
        base = f"{obs.prefix}:{obs.queue}:"
        for suffix, kind, _state in STATE_STRUCTURES:
            if kind == "zset":
                pipe.zscore(base + suffix, obs.job_id)
            else:
                pipe.lpos(base + suffix, obs.job_id)
    replies = pipe.execute(raise_on_error=False)
    states = {}
    width = len(STATE_STRUCTURES)
    for index, obs in enumerate(observations):
        found = JobState.UNKNOWN
        for offset, (_suffix, _kind, state) in enumerate(STATE_STRUCTURES):
            reply = replies[index * width + offset]
            if reply is not None and not isinstance(reply, Exception):
                found = state
                break
        states[(obs.prefix, obs.queue, obs.job_id)] = found
    return states


@dataclass
class Stored:
    """What ``store`` did with a batch."""

    written: int = 0
    unstorable: int = 0


# Errors a row's own values can cause (a number too large for its column, text the
# database refuses); anything else, a lost connection say, is not the job's fault.
_ROW_ERRORS = (DataError, IntegrityError, ValueError, OverflowError)


def store(
    client: redis.Redis,
    observations: Iterable[Observation],
    resolver: RootResolver,
    now: datetime.datetime | None = None,
) -> Stored:
    """Upsert rows for ``observations``; call inside a transaction.

    A job that cannot be stored (see ``unstorable``) is recorded as unstorable and
    the others are written. When the database refuses the batch for a reason the
    rules did not foresee, the jobs are written one by one to find the ones it refuses.
    """
    now = now or timezone.now()
    by_id: dict[tuple[str, str, str], Observation] = {}
    for obs in observations:
        by_id[(obs.prefix, obs.queue, obs.job_id)] = obs
    refused: list[tuple[Observation, str]] = []
    storable: list[Observation] = []
    for obs in by_id.values():
        problem = text_problem("the job id", obs.job_id, "job_id") or queue_problem(
            obs.prefix, obs.queue
        )
        if problem:
            refused.append((obs, problem))
        else:
            storable.append(obs)
    written = 0
    try:
        with transaction.atomic():  # a savepoint: a refused batch leaves nothing behind
            written, problems = _write(client, storable, resolver, now)
        refused += problems
    except _ROW_ERRORS:
        for obs in storable:
            try:
                with transaction.atomic():
                    count, problems = _write(client, [obs], resolver, now)
            except _ROW_ERRORS as error:
                refused.append((obs, f"the database refused it: {error}".strip()))
            else:
                written += count
                refused += problems
    record_unstorable(((obs.prefix, obs.queue, obs.job_id, reason) for obs, reason in refused), now)
    return Stored(written, len(refused))


def _write(
    client: redis.Redis,
    observations: list[Observation],
    resolver: RootResolver,
    now: datetime.datetime,
) -> tuple[int, list[tuple[Observation, str]]]:
    """Upsert the rows; returns (rows written, [(observation, why it cannot be stored)])."""
    if not observations:
        return 0, []
    existing = _fetch_existing([obs.key for obs in observations])
    refused: list[tuple[Observation, str]] = []

    present = [obs for obs in observations if obs.fields]
    gone = [obs for obs in observations if not obs.fields]

    undecided = [
        obs
        for obs in present
        if obs.state is None and (obs.prefix, obs.queue, obs.job_id) not in existing
    ]
    looked_up = _lookup_states(client, undecided) if undecided else {}

    built: list[tuple[Observation, dict[str, Any]]] = []
    parent_of: dict[str, str] = {}
    write_datetime = datetime_writer()
    synced_at = db_datetime(now)
    for obs in present:
        ident = (obs.prefix, obs.queue, obs.job_id)
        before = existing.get(ident)
        if obs.state is None:
            obs.state = before.state if before else looked_up.get(ident, JobState.UNKNOWN)
        elif obs.maybe_prioritized and to_int(obs.fields.get("priority")) > 0:
            obs.state = JobState.PRIORITIZED
        row = row_from_hash(obs, synced_at, write_datetime)
        built.append((obs, row))
        parent_of[row["key"]] = row["parent_key"]
    for obs in gone:
        before = existing.get((obs.prefix, obs.queue, obs.job_id))
        if before is None:
            parent_of.setdefault(obs.key, "")
    roots = resolver.resolve(parent_of) if parent_of else {}

    rows: list[dict[str, Any]] = []
    created_keys: list[str] = []
    parents_touched: set[str] = set()
    for obs, row in built:
        row["root_key"] = roots.get(row["key"], row["key"])
        problem = row_problem(row)
        if problem:
            refused.append((obs, problem))
            continue
        rows.append(row)
        before = existing.get((row["prefix"], row["queue"], row["job_id"]))
        if before is None:
            created_keys.append(row["key"])
        if row["parent_key"] and (before is None or before.parent_key != row["parent_key"]):
            parents_touched.add(row["parent_key"])
            if before is not None and before.parent_key:
                parents_touched.add(before.parent_key)
    upsert(rows, _FULL_UPDATE_FIELDS)

    # Jobs Redis already dropped: keep the row, record what the events told us.
    groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for obs in gone:
        ident = (obs.prefix, obs.queue, obs.job_id)
        before = existing.get(ident)
        values = event_values(obs, before.invalid_json if before else [], write_datetime)
        values["in_redis"] = False
        values["synced_at"] = synced_at
        if before is None:
            values.setdefault("state", JobState.UNKNOWN)
        row = {
            "prefix": obs.prefix,
            "queue": obs.queue,
            "job_id": obs.job_id,
            "key": obs.key,
            "root_key": roots.get(obs.key, obs.key),
            **values,
        }
        problem = row_problem(row)
        if problem:
            refused.append((obs, problem))
            continue
        if before is None:
            created_keys.append(obs.key)
        groups.setdefault(tuple(sorted(values)), []).append(row)
    for update, group in groups.items():
        upsert(group, list(update))

    created = set(created_keys)
    _refresh_children_counts(parents_touched | created, created)
    return len(rows) + sum(len(group) for group in groups.values()), refused


def _refresh_children_counts(keys: set[str], created: set[str]) -> None:
    """Set children_count of the rows ``keys`` names to their number of child rows.

    One GROUP BY finds the keys that have children; only those rows, and rows of the
    others that do not hold 0 already, are updated (most new jobs have no children).
    Rows ``created`` in this transaction hold 0 already: a childless one is not updated.
    """
    pending = sorted(keys)
    for start in range(0, len(pending), DB_CHUNK):
        chunk = pending[start : start + DB_CHUNK]
        totals = dict(
            JobRecord.objects.filter(parent_key__in=chunk)
            .order_by()
            .values("parent_key")
            .annotate(total=Count("pk"))
            .values_list("parent_key", "total")
        )
        childless = [key for key in chunk if key not in totals and key not in created]
        if childless:
            JobRecord.objects.filter(key__in=childless).exclude(children_count=0).update(
                children_count=0
            )
        by_total: dict[int, list[str]] = {}
        for key, total in totals.items():
            by_total.setdefault(total, []).append(key)
        for total, parents in by_total.items():
            JobRecord.objects.filter(key__in=parents).exclude(children_count=total).update(
                children_count=total
            )


# HGETALLs in pipelines of this many. A pipeline costs Redis 2 µs a hash here; the same
# reads in one EVAL (each reply made a Lua table and back) cost it 8.6 µs a hash, for 9
# µs less of the mirror's own CPU. Redis is what runworker's busy workers wait on, and
# the mirror's thread runs on CPU time nothing else wants (MIRROR_IDLE_PRIORITY); and a
# pipeline does not hold Redis for milliseconds at a time, as one EVAL of 500 did.
_HASHES_PER_CALL = 500


def read_hashes(client: redis.Redis, observations: list[Observation]) -> None:
    """Set each observation's ``fields`` to its job hash (None when Redis has none)."""
    for start in range(0, len(observations), _HASHES_PER_CALL):
        chunk = observations[start : start + _HASHES_PER_CALL]
        for obs, fields in zip(
            chunk, hgetall_many(client, [obs.key for obs in chunk]), strict=True
        ):
            obs.fields = fields or None
