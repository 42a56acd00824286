"""Repairing the mirror from a scan of Redis (no events needed)."""

from __future__ import annotations

import datetime
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

import redis
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from ..models import JobRecord, JobState
from .client import redis_client
from .discovery import discover_queues, mirrorable_queues
from .observation import STATE_STRUCTURES, Observation
from .parsing import to_datetime
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


def _iter_structure(
    client: redis.Redis, key: str, kind: str, page: int, min_score: int | None = None
) -> Iterator[list[tuple[str, float | None]]]:
    """Pages of (job id, score) of a state structure (score None for a list); of a sorted
    set, only the members scored ``min_score`` or more when it is given."""
    if kind == "zset":
        yield from _iter_by_score(client, key, page, "-inf" if min_score is None else min_score)
        return
    # A list by index: a job pushed on its left meanwhile makes a page see one twice;
    # jobs are taken from its right, which moves nothing. A job removed from the middle
    # (the active list, as jobs finish) can make the next page step over one: active
    # holds about as many jobs as the workers' concurrency, one page.
    start = 0
    while True:
        members = [(job_id, None) for job_id in client.lrange(key, start, start + page - 1)]
        if not members:
            return
        yield [(job_id, score) for job_id, score in members if not job_id.startswith("0:")]
        if len(members) < page:
            return
        start += page


def _iter_by_score(
    client: redis.Redis, key: str, page: int, min_score: float | str
) -> Iterator[list[tuple[str, float | None]]]:
    """Pages of a sorted set's members scored ``min_score`` (a number or "-inf") or more,
    each page from the last score the one before ended on. An offset (or a rank) made
    Redis walk every member before it again for each page, and stepped over members
    when lower ones were removed meanwhile (retention, workers taking prioritized jobs)."""
    skip = 0  # members scored exactly min_score that earlier pages returned
    while True:
        members = client.zrangebyscore(
            key, min_score, "+inf", start=skip, num=page, withscores=True
        )
        if not members:
            return
        yield [(job_id, score) for job_id, score in members if not job_id.startswith("0:")]
        if len(members) < page:
            return
        last = members[-1][1]
        on_last = sum(1 for _job_id, score in members if score == last)
        if last == min_score:
            skip += on_last  # the whole page was on min_score
        else:
            min_score, skip = last, on_last


# States whose structure's score is the job's finishedOn (ms): a row in that state with
# another finish time is a job that ran again since.
_SCORED_BY_FINISH = ("completed", "failed")
# How much earlier than the mirror's position (Redis' clock) a job that finished after it
# may say it finished: finishedOn comes from the clock of the worker that recorded it.
CLOCK_SKEW_MS = 10_000


def _already_mirrored(
    prefix: str, queue: str, state: str, members: list[tuple[str, float | None]]
) -> set[str]:
    """Ids of `members` whose row is in Redis and in `state` (for a finished job, with the
    same finish time): a changed-only reconcile leaves those rows alone."""
    rows = JobRecord.objects.filter(
        prefix=prefix, queue=queue, job_id__in=[job_id for job_id, _ in members], state=state
    ).filter(in_redis=True)
    if state not in _SCORED_BY_FINISH:
        return set(rows.values_list("job_id", flat=True))
    finished = dict(members)
    same = set()
    for job_id, finished_at in rows.values_list("job_id", "finished_at"):
        if finished_at is None:
            continue
        if timezone.is_naive(finished_at):
            finished_at = timezone.make_aware(finished_at)
        if round(finished_at.timestamp() * 1000) == finished[job_id]:
            same.add(job_id)
    return same


def _with_hash(client: redis.Redis, base: str, ids: list[str]) -> list[str]:
    """The ids whose job hash exists (an id left in a list without its job is not)."""
    if not ids:
        return []
    pipe = client.pipeline(transaction=False)
    for job_id in ids:
        pipe.exists(base + job_id)
    return [job_id for job_id, exists in zip(ids, pipe.execute(), strict=True) if exists]


def reconcile_queue(
    client: redis.Redis,
    prefix: str,
    queue: str,
    *,
    resolver: RootResolver | None = None,
    heartbeat: Callable[[], None] | None = None,
    atomic: Callable[[], AbstractContextManager[Any]] = transaction.atomic,
    page: int = 1000,
    changed_since_ms: int | None = None,
) -> dict[str, int]:
    """Repair one queue's rows from Redis: new, changed and vanished jobs.

    ``atomic`` makes each transaction (the projector's checks its lease's fence).
    ``changed_since_ms`` (Redis time, ms: where the events the projector lost began; 0
    when it had read none) is for the projector after its events stream was trimmed past
    it, at a cost that grows with what changed rather than with the whole history. Only
    the rows whose state (or finish time) differs from Redis are rewritten, and the active
    jobs'; finished jobs are read only if they finished since (less CLOCK_SKEW_MS); and
    only the rows the scan did not see, unfinished or finished since, are checked for
    vanished jobs. A change that moved no job (new data of a waiting job) waits for the
    job's next event or the next full reconcile, and so does a job that finished earlier
    and was removed in the lost window (MIRROR_RECONCILE_INTERVAL), as a job trimmed by
    its queue's retention does.
    """
    resolver = resolver or RootResolver(client)
    started = timezone.now()
    base = f"{prefix}:{queue}:"
    upserted = unstorable = 0
    seen: set[str] | None = None if changed_since_ms is None else set()
    # None: every finished job (a full reconcile, or one from the stream's start)
    finished_since = max((changed_since_ms or 0) - CLOCK_SKEW_MS, 0) or None
    for suffix, kind, state in STATE_STRUCTURES:
        min_score = finished_since if state in _SCORED_BY_FINISH else None
        for members in _iter_structure(client, base + suffix, kind, page, min_score):
            if heartbeat:
                heartbeat()
            ids = [job_id for job_id, _ in members]
            if seen is not None and state != JobState.ACTIVE:
                unchanged = _already_mirrored(prefix, queue, state, members)
                ids = [job_id for job_id in ids if job_id not in unchanged]
                seen.update(_with_hash(client, base, sorted(unchanged)))
            observations = [Observation(prefix, queue, job_id, state=state) for job_id in ids]
            read_hashes(client, observations)
            # A job that vanished between the two reads is handled by the sweep below.
            observations = [obs for obs in observations if obs.fields]
            if seen is not None:
                seen.update(obs.job_id for obs in observations)
            with atomic():
                stored = store(client, observations, resolver)
            upserted += stored.written
            unstorable += stored.unstorable
    missing = _sweep_missing(
        client,
        prefix,
        queue,
        started,
        heartbeat=heartbeat,
        atomic=atomic,
        seen=seen,
        finished_since=finished_since,
    )
    return {"upserted": upserted, "marked_missing": missing, "unstorable": unstorable}


def _sweep_missing(
    client: redis.Redis,
    prefix: str,
    queue: str,
    started: datetime.datetime,
    *,
    heartbeat: Callable[[], None] | None = None,
    atomic: Callable[[], AbstractContextManager[Any]] = transaction.atomic,
    seen: set[str] | None = None,
    finished_since: int | None = None,
) -> int:
    """Mark rows the scan did not refresh whose job hash no longer exists (`seen`: ids
    the scan found in a state structure, which need no check; `finished_since`: rows of
    jobs that finished before it (ms) are not checked)."""
    marked = 0
    last_pk = 0
    stale = JobRecord.objects.filter(
        prefix=prefix, queue=queue, in_redis=True, synced_at__lt=started
    ).order_by("pk")
    if finished_since is not None:
        stale = stale.filter(
            ~Q(state__in=_SCORED_BY_FINISH)
            | Q(finished_at__isnull=True)
            | Q(finished_at__gte=to_datetime(finished_since))
        )
    while True:
        chunk = list(stale.filter(pk__gt=last_pk).values_list("pk", "key", "job_id")[:1000])
        if not chunk:
            return marked
        if heartbeat:
            heartbeat()
        last_pk = chunk[-1][0]
        if seen is not None:
            chunk = [row for row in chunk if row[2] not in seen]
            if not chunk:
                continue
        pipe = client.pipeline(transaction=False)
        for _pk, key, _job_id in chunk:
            pipe.exists(key)
        gone = [
            pk
            for (pk, _key, _job_id), exists in zip(chunk, pipe.execute(), strict=True)
            if not exists
        ]
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
    heartbeat: Callable[[], None] | None = None,
    atomic: Callable[[], AbstractContextManager[Any]] = transaction.atomic,
) -> ReconcileResult:
    """Scan Redis and repair the mirror for every queue (or the given ones).

    Rows of jobs Redis no longer has get ``in_redis=False``; rows are never
    deleted here. With ``store_positions`` each queue's stream position is set to
    the stream's end as it was before the scan, so a projector started afterwards
    replays only what changed during and after the scan. ``atomic`` and ``heartbeat``
    as for ``reconcile_queue`` (the holder of the mirror's lease passes its fenced
    transaction and its lease's renewal).
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
        counts = reconcile_queue(
            client, prefix, queue, resolver=resolver, heartbeat=heartbeat, atomic=atomic
        )
        if store_positions and tail is not None:
            with atomic():
                save_positions({(prefix, queue): tail})
        result.queues += 1
        result.upserted += counts["upserted"]
        result.marked_missing += counts["marked_missing"]
        result.unstorable += counts["unstorable"]
        result.per_queue[queue] = counts
    return result
