"""Repairing the mirror from a scan of Redis (no events needed)."""

from __future__ import annotations

import datetime
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

import redis
from django.db import transaction
from django.utils import timezone

from ..models import JobRecord
from .client import redis_client
from .discovery import discover_queues, mirrorable_queues
from .observation import STATE_STRUCTURES, Observation
from .positions import save_positions, stream_tail
from .roots import RootResolver
from .settings import mirror_settings
from .store import read_hashes, store


@dataclass
class ReconcileResult:
    queues: int = 0
    upserted: int = 0
    marked_missing: int = 0
    unstorable: int = 0
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
    resolver: RootResolver | None = None,
    heartbeat: Callable[[], None] | None = None,
    atomic: Callable[[], AbstractContextManager[Any]] = transaction.atomic,
    page: int = 1000,
) -> dict[str, int]:
    """Repair one queue's rows from Redis: new, changed and vanished jobs.

    ``atomic`` makes each transaction (the projector's checks its lease's fence).
    """
    resolver = resolver or RootResolver(client)
    started = timezone.now()
    base = f"{prefix}:{queue}:"
    upserted = unstorable = 0
    for suffix, kind, state in STATE_STRUCTURES:
        for ids in _iter_structure(client, base + suffix, kind, page):
            if heartbeat:
                heartbeat()
            observations = [Observation(prefix, queue, job_id, state=state) for job_id in ids]
            read_hashes(client, observations)
            # A job that vanished between the two reads is handled by the sweep below.
            observations = [obs for obs in observations if obs.fields]
            with atomic():
                stored = store(client, observations, resolver)
            upserted += stored.written
            unstorable += stored.unstorable
    missing = _sweep_missing(client, prefix, queue, started, heartbeat=heartbeat, atomic=atomic)
    return {"upserted": upserted, "marked_missing": missing, "unstorable": unstorable}


def _sweep_missing(
    client: redis.Redis,
    prefix: str,
    queue: str,
    started: datetime.datetime,
    *,
    heartbeat: Callable[[], None] | None = None,
    atomic: Callable[[], AbstractContextManager[Any]] = transaction.atomic,
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
            with atomic():
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
    storable = mirrorable_queues(client, prefix, names)
    result.unstorable = len(names) - len(storable)
    names = storable
    resolver = RootResolver(client)
    for queue in names:
        tail = stream_tail(client, prefix, queue)
        counts = reconcile_queue(client, prefix, queue, resolver=resolver)
        if store_positions and tail is not None:
            save_positions({(prefix, queue): tail})
        result.queues += 1
        result.upserted += counts["upserted"]
        result.marked_missing += counts["marked_missing"]
        result.unstorable += counts["unstorable"]
        result.per_queue[queue] = counts
    return result
