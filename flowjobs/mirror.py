"""Projector that mirrors jobs from Redis into ``JobRecord`` rows.

Redis is the source of truth; this module only reads it. The projector follows
every queue's events stream (``<prefix>:<queue>:events``) with one XREAD over all
streams, reads the job hashes for the fields events do not carry, and upserts rows
in batches. Each queue's stream position is stored in the same transaction as the
rows, so a restart resumes exactly where the last committed batch stopped. When the
stream was trimmed past that position (or deleted), the queue is reconciled: its
state structures and job hashes are scanned and the rows repaired.

One projector runs per deployment at a time: whoever holds the Redis lock
``<prefix>:flowjobs:mirror-lock`` projects, the others stand by and take over when
the lock expires (see docs/admin.md).
"""

from __future__ import annotations

import atexit
import datetime
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import redis
from django.conf import settings as django_settings
from django.db import close_old_connections, connection, transaction
from django.db.models import Count, OuterRef, Subquery, Value
from django.db.models.functions import Coalesce
from django.utils import timezone

from .models import JobRecord, JobState, StreamPosition

logger = logging.getLogger("flowjobs.mirror")

__all__ = [
    "MirrorLock",
    "MirrorSettings",
    "Projector",
    "check_settings",
    "discover_queues",
    "mirror_settings",
    "prune_history",
    "reconcile",
    "reconcile_queue",
    "redis_client",
    "run_mirror",
    "start_in_worker",
]

_DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
_DEFAULT_PREFIX = "bull"

# The state a job is in after the event, for events that move it.
_STATE_AFTER_EVENT = {
    "waiting": JobState.WAITING,
    "delayed": JobState.DELAYED,
    "waiting-children": JobState.WAITING_CHILDREN,
    "active": JobState.ACTIVE,
    "completed": JobState.COMPLETED,
    "failed": JobState.FAILED,
    "stalled": JobState.WAITING,
}

# `removed` events name the structure the job was taken from.
_STATE_FROM_REMOVED_PREV = {
    "completed": JobState.COMPLETED,
    "failed": JobState.FAILED,
    "delayed": JobState.DELAYED,
    "prioritized": JobState.PRIORITIZED,
    "waiting-children": JobState.WAITING_CHILDREN,
    "wait": JobState.WAITING,
    "paused": JobState.WAITING,
    "active": JobState.ACTIVE,
}

# State structures in the order getState checks them, with how to read them.
_STATE_STRUCTURES = (
    ("completed", "zset", JobState.COMPLETED),
    ("failed", "zset", JobState.FAILED),
    ("delayed", "zset", JobState.DELAYED),
    ("prioritized", "zset", JobState.PRIORITIZED),
    ("active", "list", JobState.ACTIVE),
    ("wait", "list", JobState.WAITING),
    ("paused", "list", JobState.WAITING),
    ("waiting-children", "zset", JobState.WAITING_CHILDREN),
)

_JSON_FIELDS = ("data", "opts", "returnvalue", "progress", "stacktrace")
_EVENT_FIELDS = ("name", "returnvalue", "failed_reason", "progress", "processed_at", "finished_at")
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
_DB_CHUNK = 500


# --------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class MirrorSettings:
    """The mirror's knobs, read from ``settings.FLOWJOBS`` (env ``FLOWJOBS_<NAME>``)."""

    redis_url: str = _DEFAULT_REDIS_URL
    prefix: str = _DEFAULT_PREFIX
    in_worker: bool = True
    batch_size: int = 1000
    block_ms: int = 1000
    lock_ttl_ms: int = 30_000
    discover_interval: float = 5.0
    reconcile_interval: float | None = 900.0
    prune_interval: float = 3600.0
    history_age: int | None = None
    history_count: int | None = None

    @property
    def lock_key(self) -> str:
        return f"{self.prefix}:flowjobs:mirror-lock"


def _env(name: str) -> str | None:
    value = os.environ.get(f"FLOWJOBS_{name}")
    return value if value not in (None, "") else None


def _optional_number(value: Any) -> int | None:
    if value in (None, "", "none", "None"):
        return None
    return int(value)


def _boolean(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)


def _configured() -> dict[str, Any]:
    configured = getattr(django_settings, "FLOWJOBS", None)
    return dict(configured) if isinstance(configured, dict) else {}


def mirror_settings() -> MirrorSettings:
    """Current mirror settings: ``FLOWJOBS["MIRROR_*"]``, then env ``FLOWJOBS_MIRROR_*``.

    REDIS_URL, PREFIX and MIRROR (run the projector inside runworker) come from
    ``flowjobs.conf``.
    """
    configured = _configured()

    def pick(name: str, default: Any) -> Any:
        if name in configured:
            return configured[name]
        from_env = _env(name)
        return from_env if from_env is not None else default

    redis_url, prefix, in_worker = _base_settings(configured)
    history = pick("MIRROR_HISTORY", None)
    if isinstance(history, str):
        history = json.loads(history)
    history = history or {}
    reconcile_interval = pick("MIRROR_RECONCILE_INTERVAL", 900.0)
    return MirrorSettings(
        redis_url=redis_url,
        prefix=prefix,
        in_worker=in_worker,
        batch_size=int(pick("MIRROR_BATCH_SIZE", 1000)),
        block_ms=int(pick("MIRROR_BLOCK_MS", 1000)),
        lock_ttl_ms=int(pick("MIRROR_LOCK_TTL_MS", 30_000)),
        discover_interval=float(pick("MIRROR_DISCOVER_INTERVAL", 5.0)),
        reconcile_interval=(
            None if reconcile_interval in (None, "", "none") else float(reconcile_interval)
        ),
        prune_interval=float(pick("MIRROR_PRUNE_INTERVAL", 3600.0)),
        history_age=_optional_number(history.get("age")),
        history_count=_optional_number(history.get("count")),
    )


def check_settings() -> list[str]:
    """Messages for invalid ``MIRROR_*`` settings (empty when they are fine)."""
    problems = []
    try:
        current = mirror_settings()
    except (TypeError, ValueError, AttributeError) as error:
        return [f"FLOWJOBS MIRROR_* settings are not valid: {error}"]
    for name in ("batch_size", "block_ms", "lock_ttl_ms"):
        if getattr(current, name) <= 0:
            problems.append(f"FLOWJOBS MIRROR_{name.upper()} must be > 0")
    for name in ("history_age", "history_count"):
        value = getattr(current, name)
        if value is not None and value < 0:
            problems.append(f'FLOWJOBS MIRROR_HISTORY["{name[8:]}"] must be None or >= 0')
    if current.block_ms * 3 > current.lock_ttl_ms:
        problems.append("FLOWJOBS MIRROR_BLOCK_MS must be under a third of MIRROR_LOCK_TTL_MS")
    return problems


def _base_settings(configured: dict[str, Any]) -> tuple[str, str, bool]:
    """REDIS_URL, PREFIX and MIRROR from ``flowjobs.conf`` (the FLOWJOBS dict/env if absent)."""
    try:
        from . import conf
    except ImportError:
        conf = None
    if conf is not None:
        current = conf.settings()
        return str(current.REDIS_URL), str(current.PREFIX), bool(current.MIRROR)
    url = configured.get("REDIS_URL") or _env("REDIS_URL") or _DEFAULT_REDIS_URL
    prefix = configured.get("PREFIX") or _env("PREFIX") or _DEFAULT_PREFIX
    in_worker = configured.get("MIRROR", _env("MIRROR") or True)
    return str(url), str(prefix), _boolean(in_worker)


_clients: dict[str, redis.Redis] = {}
_clients_lock = threading.Lock()


def redis_client(url: str | None = None) -> redis.Redis:
    """A shared text-mode client for ``url`` (default: the configured REDIS_URL)."""
    url = url or mirror_settings().redis_url
    with _clients_lock:
        client = _clients.get(url)
        if client is None:
            client = redis.Redis.from_url(
                url, decode_responses=True, encoding_errors="replace", protocol=2
            )
            _clients[url] = client
        return client


# --------------------------------------------------------------------------- decoding


def _to_datetime(ms: Any) -> datetime.datetime | None:
    try:
        value = int(float(ms))
    except (TypeError, ValueError):
        return None
    if value <= 0:
        return None
    moment = datetime.datetime.fromtimestamp(value / 1000, tz=datetime.UTC)
    if not django_settings.USE_TZ:
        return timezone.make_naive(moment, timezone.get_default_timezone())
    return moment


def _to_int(value: Any, default: int = 0) -> int:
    try:
        return int(float(value))
    except (TypeError, ValueError):
        return default


def _reject_constant(name: str) -> Any:
    raise ValueError(f"non-standard JSON constant {name}")


def _clean_text(text: str) -> str:
    # PostgreSQL text and jsonb cannot hold NUL characters.
    return text.replace("\x00", "\ufffd") if "\x00" in text else text


def _parse_json(raw: str | None) -> tuple[Any, bool]:
    """(value, parsed_ok). Text that is not JSON comes back unchanged with False."""
    if raw is None:
        return None, True
    if "\\u0000" in raw:
        raw = raw.replace("\\u0000", "\\ufffd")
    try:
        return json.loads(raw, parse_constant=_reject_constant), True
    except (ValueError, RecursionError):
        return _clean_text(raw), False


def _entry_ms(entry_id: str) -> int:
    return _to_int(entry_id.split("-", 1)[0])


def _compare_ids(a: str, b: str) -> int:
    a_ms, _, a_seq = a.partition("-")
    b_ms, _, b_seq = b.partition("-")
    left = (_to_int(a_ms), _to_int(a_seq))
    right = (_to_int(b_ms), _to_int(b_seq))
    return (left > right) - (left < right)


def _split_queue_key(queue_key: str) -> tuple[str, str]:
    """``"<prefix>:<queue>"`` -> (prefix, queue); queue names never contain ':'."""
    prefix, _, queue = queue_key.rpartition(":")
    return prefix, queue


def _job_key(prefix: str, queue: str, job_id: str) -> str:
    return f"{prefix}:{queue}:{job_id}"


# --------------------------------------------------------------------------- observations


@dataclass
class _Observation:
    """What the mirror learned about one job in one batch."""

    prefix: str
    queue: str
    job_id: str
    fields: dict[str, str] | None = None  # the job hash; None when Redis no longer has it
    state: str | None = None  # None: keep the stored state
    name: str | None = None
    returnvalue: str | None = None
    failed_reason: str | None = None
    progress: str | None = None
    processed_ms: int | None = None
    finished_ms: int | None = None
    # `waiting` does not say whether the job went to the wait list or to `prioritized`.
    maybe_prioritized: bool = False

    @property
    def key(self) -> str:
        return _job_key(self.prefix, self.queue, self.job_id)

    def apply_event(self, event: str, entry: dict[str, str], entry_id: str) -> None:
        state = _STATE_AFTER_EVENT.get(event)
        if event == "removed":
            state = _STATE_FROM_REMOVED_PREV.get(entry.get("prev", ""))
        if state is not None:
            self.state = state
            # Reprocessing finished jobs always pushes to the wait list, even when prioritized.
            self.maybe_prioritized = event == "waiting" and entry.get("prev") not in (
                "failed",
                "completed",
            )
        if event == "added" and entry.get("name") is not None:
            self.name = entry["name"]
        elif event == "active":
            self.processed_ms = _entry_ms(entry_id)
            self.finished_ms = None
        elif event == "completed":
            self.returnvalue = entry.get("returnvalue")
            self.finished_ms = _entry_ms(entry_id)
        elif event == "failed":
            self.failed_reason = entry.get("failedReason", "")
            self.finished_ms = _entry_ms(entry_id)
        elif event == "progress":
            self.progress = entry.get("data")


def _row_from_hash(obs: _Observation, now: datetime.datetime) -> dict[str, Any]:
    fields = obs.fields or {}
    invalid: list[str] = []
    decoded: dict[str, Any] = {}
    for name in _JSON_FIELDS:
        raw = fields.get(name)
        value, ok = _parse_json(raw)
        if not ok:
            invalid.append(name)
        decoded[name] = value
    parent_key = fields.get("parentKey", "") or ""
    parent_queue = parent_job_id = ""
    if parent_key:
        parent_value, ok = _parse_json(fields.get("parent"))
        if ok and isinstance(parent_value, dict) and parent_value.get("queueKey"):
            parent_queue = _split_queue_key(str(parent_value["queueKey"]))[1]
            parent_job_id = str(parent_value.get("id", ""))
        else:
            rest, _, parent_job_id = parent_key.rpartition(":")
            parent_queue = _split_queue_key(rest)[1]
    attempts_made = fields.get("atm")
    if attempts_made is None:
        attempts_made = fields.get("attemptsMade")
    return dict(
        prefix=obs.prefix,
        queue=obs.queue,
        job_id=obs.job_id,
        key=obs.key,
        name=_clean_text(fields.get("name", obs.name or ""))[:255],
        state=obs.state or JobState.UNKNOWN,
        parent_key=parent_key,
        parent_queue=parent_queue[:255],
        parent_job_id=parent_job_id[:255],
        root_key=obs.key,
        data=decoded["data"],
        opts=decoded["opts"],
        returnvalue=decoded["returnvalue"],
        progress=decoded["progress"],
        failed_reason=_clean_text(fields.get("failedReason", "")),
        stacktrace=decoded["stacktrace"],
        invalid_json=invalid,
        priority=_to_int(fields.get("priority")),
        delay=_to_int(fields.get("delay")),
        attempts_made=_to_int(attempts_made),
        attempts_started=_to_int(fields.get("ats")),
        stalled_counter=_to_int(fields.get("stc")),
        processed_by=_clean_text(fields.get("pb", ""))[:255],
        created_at=_to_datetime(fields.get("timestamp")),
        processed_at=_to_datetime(fields.get("processedOn")),
        finished_at=_to_datetime(fields.get("finishedOn")),
        synced_at=now,
        in_redis=True,
    )


def _event_values(obs: _Observation, invalid_before: list[str]) -> dict[str, Any]:
    """Column values the events carried, for a job whose hash is gone."""
    values: dict[str, Any] = {}
    invalid = set(invalid_before)
    if obs.state is not None:
        values["state"] = obs.state
    if obs.name is not None:
        values["name"] = _clean_text(obs.name)[:255]
    for column, raw in (("returnvalue", obs.returnvalue), ("progress", obs.progress)):
        if raw is not None:
            value, ok = _parse_json(raw)
            values[column] = value
            if ok:
                invalid.discard(column)
            else:
                invalid.add(column)
    if obs.failed_reason is not None:
        values["failed_reason"] = _clean_text(obs.failed_reason)
    if obs.processed_ms is not None:
        values["processed_at"] = _to_datetime(obs.processed_ms)
    if obs.finished_ms is not None:
        values["finished_at"] = _to_datetime(obs.finished_ms)
    values["invalid_json"] = sorted(invalid)
    return values


# --------------------------------------------------------------------------- storing


@dataclass
class _Existing:
    pk: int
    state: str
    parent_key: str
    root_key: str
    invalid_json: list[str]


class _RootResolver:
    """Finds each job's flow root, from the batch, then the mirror, then Redis."""

    _MAX_DEPTH = 64
    _CACHE_LIMIT = 100_000

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self.root_cache: dict[str, str] = {}

    def resolve(self, parent_of: dict[str, str]) -> dict[str, str]:
        """Root key of every key in ``parent_of`` (key -> parent key or "")."""
        if len(self.root_cache) > self._CACHE_LIMIT:
            self.root_cache.clear()
        parents = dict(parent_of)
        roots: dict[str, str] = {}

        def walk(key: str) -> str | None:
            path = []
            current = key
            for _ in range(self._MAX_DEPTH):
                if current in roots:
                    found = roots[current]
                    break
                if current in self.root_cache:
                    found = self.root_cache[current]
                    break
                parent = parents.get(current)
                if parent is None:
                    return None  # not known yet
                path.append(current)
                if not parent:
                    found = current
                    break
                current = parent
            else:
                found = current
            for step in path:
                roots[step] = found
            return found

        for _round in range(self._MAX_DEPTH):
            unknown = {k for k in parent_of if walk(k) is None}
            if not unknown:
                break
            frontier = set()
            for key in unknown:
                current = key
                while parents.get(current):
                    current = parents[current]
                frontier.add(current)
            frontier -= set(roots) | set(self.root_cache)
            self._load_from_mirror(frontier, parents)
            missing = [k for k in frontier if k not in parents and k not in self.root_cache]
            if missing:
                pipe = self.client.pipeline(transaction=False)
                for key in missing:
                    pipe.hget(key, "parentKey")
                for key, parent in zip(missing, pipe.execute(), strict=True):
                    # A parent Redis no longer has is the topmost ancestor we can know.
                    parents[key] = parent or ""
        result = {}
        for key in parent_of:
            root = walk(key) or key
            result[key] = root
            self.root_cache[key] = root
        return result

    def _load_from_mirror(self, keys: set[str], parents: dict[str, str]) -> None:
        pending = list(keys)
        for start in range(0, len(pending), _DB_CHUNK):
            chunk = pending[start : start + _DB_CHUNK]
            rows = JobRecord.objects.filter(key__in=chunk).values_list(
                "key", "parent_key", "root_key"
            )
            for key, parent_key, root_key in rows:
                if root_key:
                    self.root_cache[key] = root_key
                else:
                    parents[key] = parent_key


def _fetch_existing(keys: list[str]) -> dict[tuple[str, str, str], _Existing]:
    existing: dict[tuple[str, str, str], _Existing] = {}
    for start in range(0, len(keys), _DB_CHUNK):
        chunk = keys[start : start + _DB_CHUNK]
        rows = JobRecord.objects.filter(key__in=chunk).values_list(
            "pk", "prefix", "queue", "job_id", "state", "parent_key", "root_key", "invalid_json"
        )
        for pk, prefix, queue, job_id, state, parent_key, root_key, invalid in rows:
            existing[(prefix, queue, job_id)] = _Existing(
                pk, state, parent_key, root_key, list(invalid or [])
            )
    return existing


def _lookup_states(
    client: redis.Redis, observations: list[_Observation]
) -> dict[tuple[str, str, str], str]:
    """Exact state of jobs the events left ambiguous (rare: no state-moving event seen)."""
    pipe = client.pipeline(transaction=False)
    for obs in observations:
        base = f"{obs.prefix}:{obs.queue}:"
        for suffix, kind, _state in _STATE_STRUCTURES:
            if kind == "zset":
                pipe.zscore(base + suffix, obs.job_id)
            else:
                pipe.lpos(base + suffix, obs.job_id)
    replies = pipe.execute(raise_on_error=False)
    states = {}
    width = len(_STATE_STRUCTURES)
    for index, obs in enumerate(observations):
        found = JobState.UNKNOWN
        for offset, (_suffix, _kind, state) in enumerate(_STATE_STRUCTURES):
            reply = replies[index * width + offset]
            if reply is not None and not isinstance(reply, Exception):
                found = state
                break
        states[(obs.prefix, obs.queue, obs.job_id)] = found
    return states


def _store(
    client: redis.Redis,
    observations: Iterable[_Observation],
    resolver: _RootResolver,
    now: datetime.datetime | None = None,
) -> int:
    """Upsert rows for ``observations``; call inside a transaction. Returns rows written."""
    now = now or timezone.now()
    by_id: dict[tuple[str, str, str], _Observation] = {}
    for obs in observations:
        by_id[(obs.prefix, obs.queue, obs.job_id)] = obs
    if not by_id:
        return 0
    existing = _fetch_existing([obs.key for obs in by_id.values()])

    present = [obs for obs in by_id.values() if obs.fields]
    gone = [obs for obs in by_id.values() if not obs.fields]

    undecided = [
        obs
        for obs in present
        if obs.state is None and (obs.prefix, obs.queue, obs.job_id) not in existing
    ]
    looked_up = _lookup_states(client, undecided) if undecided else {}

    rows: list[dict[str, Any]] = []
    parent_of: dict[str, str] = {}
    for obs in present:
        ident = (obs.prefix, obs.queue, obs.job_id)
        before = existing.get(ident)
        if obs.state is None:
            obs.state = before.state if before else looked_up.get(ident, JobState.UNKNOWN)
        elif obs.maybe_prioritized and _to_int(obs.fields.get("priority")) > 0:
            obs.state = JobState.PRIORITIZED
        row = _row_from_hash(obs, now)
        rows.append(row)
        parent_of[row["key"]] = row["parent_key"]
    for obs in gone:
        before = existing.get((obs.prefix, obs.queue, obs.job_id))
        if before is None:
            parent_of.setdefault(obs.key, "")
    roots = resolver.resolve(parent_of) if parent_of else {}

    created_keys: list[str] = []
    parents_touched: set[str] = set()
    for row in rows:
        row["root_key"] = roots.get(row["key"], row["key"])
        before = existing.get((row["prefix"], row["queue"], row["job_id"]))
        if before is None:
            created_keys.append(row["key"])
        if row["parent_key"] and (before is None or before.parent_key != row["parent_key"]):
            parents_touched.add(row["parent_key"])
            if before is not None and before.parent_key:
                parents_touched.add(before.parent_key)
    _upsert(rows, _FULL_UPDATE_FIELDS)

    # Jobs Redis already dropped: keep the row, record what the events told us.
    groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for obs in gone:
        ident = (obs.prefix, obs.queue, obs.job_id)
        before = existing.get(ident)
        values = _event_values(obs, before.invalid_json if before else [])
        values["in_redis"] = False
        values["synced_at"] = now
        if before is None:
            created_keys.append(obs.key)
            values.setdefault("state", JobState.UNKNOWN)
        update = tuple(sorted(values))
        row = {
            "prefix": obs.prefix,
            "queue": obs.queue,
            "job_id": obs.job_id,
            "key": obs.key,
            "root_key": roots.get(obs.key, obs.key),
            **values,
        }
        groups.setdefault(update, []).append(row)
    for update, group in groups.items():
        _upsert(group, list(update))

    _refresh_children_counts(parents_touched | set(created_keys))
    return len(rows) + len(gone)


def _column_defaults() -> dict[str, Any]:
    return {
        f.attname: f.get_default() for f in JobRecord._meta.concrete_fields if not f.primary_key
    }


def _upsert(rows: list[dict[str, Any]], update_fields: list[str]) -> None:
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
            batch_size=_DB_CHUNK,
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
        per_statement = max(1, min(_DB_CHUNK, max_params // len(fields)))
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


def _refresh_children_counts(keys: set[str]) -> None:
    if not keys:
        return
    count = (
        JobRecord.objects.filter(parent_key=OuterRef("key"))
        .order_by()
        .values("parent_key")
        .annotate(total=Count("pk"))
        .values("total")
    )
    pending = sorted(keys)
    for start in range(0, len(pending), _DB_CHUNK):
        chunk = pending[start : start + _DB_CHUNK]
        JobRecord.objects.filter(key__in=chunk).update(
            children_count=Coalesce(Subquery(count), Value(0))
        )


def _read_hashes(client: redis.Redis, observations: list[_Observation]) -> None:
    for start in range(0, len(observations), 1000):
        chunk = observations[start : start + 1000]
        pipe = client.pipeline(transaction=False)
        for obs in chunk:
            pipe.hgetall(obs.key)
        for obs, fields in zip(chunk, pipe.execute(), strict=True):
            obs.fields = fields or None


# --------------------------------------------------------------------------- discovery


def discover_queues(client: redis.Redis, prefix: str) -> list[str]:
    """Queue names under ``prefix`` that have a ``meta`` hash or an ``events`` stream."""
    found: set[str] = set()
    head = f"{prefix}:"
    for suffix in (":meta", ":events"):
        for key in client.scan_iter(match=f"{_escape_glob(prefix)}:*{suffix}", count=1000):
            if not key.startswith(head) or not key.endswith(suffix):
                continue
            queue = key[len(head) : -len(suffix)]
            if queue and ":" not in queue:
                found.add(queue)
    return sorted(found)


def _escape_glob(text: str) -> str:
    return "".join("\\" + ch if ch in "*?[]\\" else ch for ch in text)


# --------------------------------------------------------------------------- reconcile


@dataclass
class ReconcileResult:
    queues: int = 0
    upserted: int = 0
    marked_missing: int = 0
    per_queue: dict[str, dict[str, int]] = field(default_factory=dict)


def _iter_structure(client: redis.Redis, key: str, kind: str, page: int) -> Iterator[list[str]]:
    start = 0
    while True:
        if kind == "zset":
            ids = client.zrange(key, start, start + page - 1)
        else:
            ids = client.lrange(key, start, start + page - 1)
        if not ids:
            return
        yield [job_id for job_id in ids if not job_id.startswith("0:")]
        if len(ids) < page:
            return
        start += page


def reconcile_queue(
    client: redis.Redis,
    prefix: str,
    queue: str,
    *,
    resolver: _RootResolver | None = None,
    heartbeat: Any = None,
    page: int = 1000,
) -> dict[str, int]:
    """Repair one queue's rows from Redis: new, changed and vanished jobs."""
    resolver = resolver or _RootResolver(client)
    started = timezone.now()
    base = f"{prefix}:{queue}:"
    upserted = 0
    for suffix, kind, state in _STATE_STRUCTURES:
        for ids in _iter_structure(client, base + suffix, kind, page):
            if heartbeat:
                heartbeat()
            observations = [_Observation(prefix, queue, job_id, state=state) for job_id in ids]
            _read_hashes(client, observations)
            # A job that vanished between the two reads is handled by the sweep below.
            observations = [obs for obs in observations if obs.fields]
            with transaction.atomic():
                upserted += _store(client, observations, resolver)
    missing = _sweep_missing(client, prefix, queue, started, heartbeat=heartbeat)
    return {"upserted": upserted, "marked_missing": missing}


def _sweep_missing(
    client: redis.Redis,
    prefix: str,
    queue: str,
    started: datetime.datetime,
    *,
    heartbeat: Any = None,
) -> int:
    """Mark rows the scan did not refresh whose job hash no longer exists."""
    marked = 0
    last_pk = 0
    stale = JobRecord.objects.filter(
        prefix=prefix, queue=queue, in_redis=True, synced_at__lt=started
    ).order_by("pk")
    while True:
        chunk = list(stale.filter(pk__gt=last_pk).values_list("pk", "key")[:1000])
        if not chunk:
            return marked
        if heartbeat:
            heartbeat()
        last_pk = chunk[-1][0]
        pipe = client.pipeline(transaction=False)
        for _pk, key in chunk:
            pipe.exists(key)
        gone = [pk for (pk, _key), exists in zip(chunk, pipe.execute(), strict=True) if not exists]
        if gone:
            marked += JobRecord.objects.filter(pk__in=gone).update(
                in_redis=False, synced_at=timezone.now()
            )


def reconcile(
    client: redis.Redis | None = None,
    prefix: str | None = None,
    queues: Iterable[str] | None = None,
    *,
    store_positions: bool = True,
) -> ReconcileResult:
    """Scan Redis and repair the mirror for every queue (or the given ones).

    Rows of jobs Redis no longer has get ``in_redis=False``; rows are never
    deleted here. With ``store_positions`` each queue's stream position is set to
    the stream's end as it was before the scan, so a projector started afterwards
    replays only what changed during and after the scan.
    """
    current = mirror_settings()
    client = client or redis_client(current.redis_url)
    prefix = prefix or current.prefix
    names = sorted(set(queues)) if queues is not None else discover_queues(client, prefix)
    known = set(JobRecord.objects.filter(prefix=prefix).values_list("queue", flat=True).distinct())
    if queues is None:
        names = sorted(set(names) | known)
    result = ReconcileResult()
    resolver = _RootResolver(client)
    for queue in names:
        tail = _stream_tail(client, prefix, queue)
        counts = reconcile_queue(client, prefix, queue, resolver=resolver)
        if store_positions and tail is not None:
            _save_positions({(prefix, queue): tail})
        result.queues += 1
        result.upserted += counts["upserted"]
        result.marked_missing += counts["marked_missing"]
        result.per_queue[queue] = counts
    return result


def _stream_tail(client: redis.Redis, prefix: str, queue: str) -> tuple[str, int | None] | None:
    """(last id, entries added) of a queue's events stream; None when it has none."""
    try:
        info = client.xinfo_stream(f"{prefix}:{queue}:events")
    except redis.ResponseError:
        return None
    added = info.get("entries-added")
    return str(info.get("last-generated-id") or "0-0"), (None if added is None else int(added))


def _save_positions(positions: dict[tuple[str, str], tuple[str, int | None]]) -> None:
    if not positions:
        return
    StreamPosition.objects.bulk_create(
        [
            StreamPosition(prefix=prefix, queue=queue, last_id=last_id, entries_read=read)
            for (prefix, queue), (last_id, read) in positions.items()
        ],
        update_conflicts=True,
        unique_fields=["prefix", "queue"],
        update_fields=["last_id", "entries_read", "updated_at"],
    )


# --------------------------------------------------------------------------- history


def prune_history(
    age: int | None = None,
    count: int | None = None,
    *,
    now: datetime.datetime | None = None,
) -> int:
    """Delete rows of jobs Redis no longer has beyond the history bounds.

    ``age`` (seconds): rows whose job finished (else was created, else was synced)
    longer ago than that go. ``count``: each queue keeps at most that many rows of
    removed jobs, newest first. Rows of jobs still in Redis are never pruned.
    """
    now = now or timezone.now()
    history = JobRecord.objects.filter(in_redis=False).annotate(
        history_at=Coalesce("finished_at", "created_at", "synced_at")
    )
    deleted = 0
    if age is not None:
        cutoff = now - datetime.timedelta(seconds=age)
        while True:
            pks = list(history.filter(history_at__lt=cutoff).values_list("pk", flat=True)[:5000])
            if not pks:
                break
            deleted += JobRecord.objects.filter(pk__in=pks).delete()[0]
    if count is not None:
        queues = history.values_list("prefix", "queue").distinct().order_by()
        for prefix, queue in list(queues):
            in_queue = history.filter(prefix=prefix, queue=queue).order_by("-history_at", "-pk")
            while True:
                pks = list(in_queue.values_list("pk", flat=True)[count : count + 5000])
                if not pks:
                    break
                deleted += JobRecord.objects.filter(pk__in=pks).delete()[0]
    return deleted


# --------------------------------------------------------------------------- lock


class LockLost(Exception):
    """The projector no longer holds the deployment's mirror lock."""


_RENEW_SCRIPT = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
_RELEASE_SCRIPT = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class MirrorLock:
    """``SET NX PX`` lock so that one projector runs per deployment."""

    def __init__(self, client: redis.Redis, key: str, ttl_ms: int, token: str | None = None):
        self.client = client
        self.key = key
        self.ttl_ms = ttl_ms
        self.token = token or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"
        self._renewed_at = 0.0
        self._renew = client.register_script(_RENEW_SCRIPT)
        self._release = client.register_script(_RELEASE_SCRIPT)

    def acquire(self) -> bool:
        """Take the lock if it is free (or already ours)."""
        if self.client.set(self.key, self.token, nx=True, px=self.ttl_ms):
            self._renewed_at = time.monotonic()
            return True
        return self.renew()

    def renew(self) -> bool:
        ok = bool(self._renew(keys=[self.key], args=[self.token, self.ttl_ms]))
        if ok:
            self._renewed_at = time.monotonic()
        return ok

    def keep(self) -> None:
        """Renew when a third of the TTL has passed; raise LockLost if it is gone."""
        due = time.monotonic() - self._renewed_at >= self.ttl_ms / 3000
        if due and not self.renew():
            raise LockLost(f"mirror lock {self.key} is no longer held by {self.token}")

    def release(self) -> None:
        try:
            self._release(keys=[self.key], args=[self.token])
        except redis.RedisError:
            logger.warning("could not release mirror lock %s", self.key, exc_info=True)

    def wait_hint(self) -> float:
        """Seconds to wait before trying again to take the lock.

        At most a second (a GET-sized command), so that a standby notices a lock
        released by a clean shutdown at once; sooner when the holder's TTL ends first.
        """
        try:
            remaining = self.client.pttl(self.key)
        except redis.RedisError:
            remaining = -1
        longest = min(1.0, self.ttl_ms / 3000)
        if remaining is None or remaining < 0:
            return longest
        return max(0.05, min(longest, remaining / 1000))


# --------------------------------------------------------------------------- projector


@dataclass
class _Stream:
    prefix: str
    queue: str
    last_id: str = "0-0"
    entries_read: int | None = 0

    @property
    def key(self) -> str:
        return f"{self.prefix}:{self.queue}:events"


class Projector:
    """Follows the events streams of every queue under one prefix.

    Call :meth:`step` repeatedly (or :meth:`run`). Each step reads up to
    ``batch_size`` events per stream, applies them, and commits the rows with the
    new stream positions in one transaction.
    """

    def __init__(
        self,
        client: redis.Redis | None = None,
        prefix: str | None = None,
        *,
        config: MirrorSettings | None = None,
        lock: MirrorLock | None = None,
    ) -> None:
        self.config = config or mirror_settings()
        self.client = client or redis_client(self.config.redis_url)
        self.prefix = prefix or self.config.prefix
        self.lock = lock
        self.streams: dict[str, _Stream] = {}
        self.resolver = _RootResolver(self.client)
        self._discovered_at = -1e18
        self._reconciled_at = time.monotonic()
        self._pruned_at = -1e18
        self.events_applied = 0
        self.reconciles = 0

    # -- bookkeeping ------------------------------------------------------------

    def _heartbeat(self) -> None:
        if self.lock is not None:
            self.lock.keep()

    def load_positions(self) -> None:
        """(Re)load every queue's position from the database."""
        self.streams = {}
        for position in StreamPosition.objects.filter(prefix=self.prefix):
            stream = _Stream(self.prefix, position.queue, position.last_id, position.entries_read)
            self.streams[stream.key] = stream
        self._discovered_at = -1e18

    def discover(self, force: bool = False) -> None:
        if not force and time.monotonic() - self._discovered_at < self.config.discover_interval:
            return
        self._discovered_at = time.monotonic()
        for queue in discover_queues(self.client, self.prefix):
            stream = _Stream(self.prefix, queue)
            self.streams.setdefault(stream.key, stream)

    # -- one cycle --------------------------------------------------------------

    def step(self, block_ms: int | None = None) -> int:
        """Apply the next batch; block up to ``block_ms`` when idle. Returns events applied."""
        self._heartbeat()
        self.discover()
        if not self.streams:
            return 0
        streams = list(self.streams.values())
        pipe = self.client.pipeline(transaction=True)
        for stream in streams:
            pipe.xinfo_stream(stream.key)
        pipe.xread({stream.key: stream.last_id for stream in streams}, count=self.config.batch_size)
        replies = pipe.execute(raise_on_error=False)
        infos, read = replies[:-1], replies[-1]
        if isinstance(read, Exception):
            raise read

        lost = [
            stream for stream, info in zip(streams, infos, strict=True) if self._lost(stream, info)
        ]
        if lost:
            self._recover(lost)
            return 0

        entries_by_key = _entries_by_stream(read)
        if not entries_by_key:
            wait = self.config.block_ms if block_ms is None else block_ms
            if wait > 0:
                self.client.xread(
                    {stream.key: stream.last_id for stream in streams}, count=1, block=wait
                )
            return 0
        return self._apply(streams, entries_by_key)

    def _lost(self, stream: _Stream, info: Any) -> bool:
        """Whether entries after our position are gone (trimmed, or the stream deleted)."""
        if isinstance(info, Exception):
            # No stream: fine for a queue we never read; otherwise it was deleted.
            return stream.last_id != "0-0"
        length = int(info.get("length") or 0)
        added = info.get("entries-added")
        last_generated = str(info.get("last-generated-id") or "0-0")
        if _compare_ids(last_generated, stream.last_id) < 0:
            return True  # recreated with older ids
        if added is not None and stream.entries_read is not None:
            added = int(added)
            if added < stream.entries_read:
                return True  # recreated
            return added - length > stream.entries_read
        first = info.get("first-entry")
        if not first:
            return _compare_ids(last_generated, stream.last_id) > 0
        return _compare_ids(first[0], stream.last_id) > 0 and stream.last_id != "0-0"

    def _recover(self, lost: list[_Stream]) -> None:
        for stream in lost:
            logger.info(
                "events stream %s was trimmed past %s: reconciling queue %s",
                stream.key,
                stream.last_id,
                stream.queue,
            )
            tail = _stream_tail(self.client, stream.prefix, stream.queue) or ("0-0", 0)
            reconcile_queue(
                self.client,
                stream.prefix,
                stream.queue,
                resolver=self.resolver,
                heartbeat=self._heartbeat,
            )
            stream.last_id, stream.entries_read = tail
            with transaction.atomic():
                _save_positions({(stream.prefix, stream.queue): tail})
            self.reconciles += 1

    def _apply(self, streams: list[_Stream], entries_by_key: dict[str, list[Any]]) -> int:
        observations: dict[tuple[str, str, str], _Observation] = {}
        to_reconcile: list[_Stream] = []
        moved: dict[tuple[str, str], tuple[str, int | None]] = {}
        applied = 0
        for stream in streams:
            entries = entries_by_key.get(stream.key)
            if not entries:
                continue
            for entry_id, entry in entries:
                applied += 1
                event = entry.get("event", "")
                if event == "cleaned":
                    # clean() removes jobs without per-job events.
                    if stream not in to_reconcile:
                        to_reconcile.append(stream)
                    continue
                job_id = entry.get("jobId")
                if not job_id:
                    continue
                ident = (stream.prefix, stream.queue, job_id)
                obs = observations.get(ident)
                if obs is None:
                    obs = observations[ident] = _Observation(*ident)
                obs.apply_event(event, entry, entry_id)
            read = None if stream.entries_read is None else stream.entries_read + len(entries)
            moved[(stream.prefix, stream.queue)] = (entries[-1][0], read)

        pending = list(observations.values())
        _read_hashes(self.client, pending)
        with transaction.atomic():
            _store(self.client, pending, self.resolver)
            _save_positions(moved)
        for stream in streams:
            if (stream.prefix, stream.queue) in moved:
                stream.last_id, stream.entries_read = moved[(stream.prefix, stream.queue)]
        self.events_applied += applied
        for stream in to_reconcile:
            reconcile_queue(
                self.client,
                stream.prefix,
                stream.queue,
                resolver=self.resolver,
                heartbeat=self._heartbeat,
            )
        return applied

    def housekeeping(self) -> None:
        """Periodic full reconcile (drain/obliterate emit no events) and history pruning."""
        interval = self.config.reconcile_interval
        if interval is not None and time.monotonic() - self._reconciled_at >= interval:
            self._reconciled_at = time.monotonic()
            for stream in list(self.streams.values()):
                self._heartbeat()
                reconcile_queue(
                    self.client,
                    stream.prefix,
                    stream.queue,
                    resolver=self.resolver,
                    heartbeat=self._heartbeat,
                )
        bounded = self.config.history_age is not None or self.config.history_count is not None
        if bounded and time.monotonic() - self._pruned_at >= self.config.prune_interval:
            self._pruned_at = time.monotonic()
            pruned = prune_history(self.config.history_age, self.config.history_count)
            if pruned:
                logger.info("pruned %d mirrored jobs beyond the history bounds", pruned)

    def catch_up(self, max_steps: int = 1_000_000) -> int:
        """Apply events until every stream is read to its end (no blocking)."""
        total = 0
        self.discover(force=True)
        for _ in range(max_steps):
            applied = self.step(block_ms=0)
            if applied == 0 and not self._behind():
                break
            total += applied
        return total

    def _behind(self) -> bool:
        pipe = self.client.pipeline(transaction=False)
        streams = list(self.streams.values())
        for stream in streams:
            pipe.xinfo_stream(stream.key)
        for stream, info in zip(streams, pipe.execute(raise_on_error=False), strict=True):
            if isinstance(info, Exception):
                continue
            if _compare_ids(str(info.get("last-generated-id") or "0-0"), stream.last_id) > 0:
                return True
        return False

    def run(self, stop_event: threading.Event) -> None:
        """Project until ``stop_event`` is set (or the lock is lost)."""
        self.load_positions()
        while not stop_event.is_set():
            close_old_connections()
            self.step()
            self.housekeeping()


def _entries_by_stream(reply: Any) -> dict[str, list[Any]]:
    if not reply:
        return {}
    if isinstance(reply, dict):  # RESP3 shape
        return {
            key: (value[0] if value and isinstance(value[0], list) else value)
            for key, value in reply.items()
        }
    return {key: entries for key, entries in reply}


# --------------------------------------------------------------------------- running


def run_mirror(
    stop_event: threading.Event,
    *,
    config: MirrorSettings | None = None,
    client: redis.Redis | None = None,
    on_state: Any = None,
) -> None:
    """Hold the deployment's mirror lock and project; stand by while someone else does."""
    config = config or mirror_settings()
    client = client or redis_client(config.redis_url)
    lock = MirrorLock(client, config.lock_key, config.lock_ttl_ms)
    try:
        while not stop_event.is_set():
            try:
                if not lock.acquire():
                    if on_state:
                        on_state("standby")
                    stop_event.wait(lock.wait_hint())
                    continue
                if on_state:
                    on_state("projecting")
                logger.info("mirror lock %s taken by %s: projecting", lock.key, lock.token)
                Projector(client, config.prefix, config=config, lock=lock).run(stop_event)
            except LockLost:
                logger.warning("mirror lock %s lost; standing by", lock.key)
            except Exception:
                logger.exception("mirror projector failed; retrying")
                stop_event.wait(min(5.0, config.lock_ttl_ms / 3000))
            finally:
                connection.close()
    finally:
        lock.release()


def start_in_worker(stop_event: threading.Event) -> threading.Thread | None:
    """Start the mirror in a daemon thread of ``runworker`` (unless MIRROR_IN_WORKER is off).

    Every runworker may call this; the Redis lock makes sure only one projector
    writes at a time across the deployment. The thread ends when ``stop_event`` is set.
    """
    config = mirror_settings()
    if not config.in_worker:
        return None
    thread = threading.Thread(
        target=run_mirror,
        args=(stop_event,),
        kwargs={"config": config},
        name="flowjobs-mirror",
        daemon=True,
    )
    thread.start()

    def finish() -> None:
        # A daemon thread dies with the process: give it a moment to commit its batch
        # and release the lock, so a standby takes over now rather than after the TTL.
        if stop_event.is_set():
            thread.join(config.block_ms / 1000 + 5)

    atexit.register(finish)
    return thread
