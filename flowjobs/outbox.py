"""The transactional outbox: enqueue on commit without ever losing a job.

``flowjobs.enqueue`` (on commit), ``ENQUEUE_ON_COMMIT`` and the django.tasks backend
write each job, bulk add or whole flow as one ``OutboxEntry`` row in the caller's own
transaction, with its job ids fixed at that moment. After the commit the entries of
the transaction are pushed to Redis at once (today's latency) and, once Redis confirmed
them, deleted by a background reaper; whatever is left (Redis refused, hung or full; the
process died) is pushed by the relay (``Relay``: inside ``runworker``, or ``manage.py
relayoutbox``), which deletes what it pushed in the same transaction.

Why a push never adds a job twice (see ``flowjobs.engine.outbox``): every push runs
the add script with the entry's receipt key and a deadline on Redis's clock taken
before the entry was read. The first push writes the jobs and the receipt in one
step; any later push of the same entry (a retry after a timeout, a second pusher, a
stale relay that was paused) finds the receipt, or is past its deadline, and writes
nothing. Receipts are kept until the row is deleted, then RECEIPT_KEEP_MS more.

Order: entries of one transaction share a ``batch``; a pusher never pushes an entry
while an earlier entry of its batch is held by another pusher, and stops at the first
entry Redis did not take, so the relay later pushes the rest in order.
"""

from __future__ import annotations

import atexit
import logging
import os
import queue
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from typing import Any

import redis
from django.conf import settings as django_settings
from django.db import DatabaseError, connections, transaction
from django.db.models import Min, QuerySet
from django.utils import timezone
from redis.backoff import NoBackoff
from redis.retry import Retry

from . import conf
from .database import tidy_connections
from .engine import ConnectionFailed, FlowJobsError, FlowProducer
from .engine.connection import sync_client
from .engine.flow import EncodedFlows
from .engine.options import EncodedJob
from .engine.outbox import (
    AlreadyPushed,
    PushReceipt,
    PushTooLate,
    receipt_key,
    redis_time_ms,
    shorten_receipts,
)
from .outbox_entry import OutboxEntry, OutboxKind

__all__ = [
    "OutboxNotConfigured",
    "OutboxSettings",
    "PushOutcome",
    "Relay",
    "backlog",
    "check_settings",
    "outbox_settings",
    "push_entries",
    "relay_heartbeat_ms",
    "stage",
    "start_in_worker",
]

logger = logging.getLogger("flowjobs.outbox")

# How long a pusher may take from reading entries (its Redis time) to pushing them; a
# push later than that writes nothing. Far above any bounded Redis wait.
LEASE_MS = 60_000
# The push after commit reads Redis's clock at most this long after writing the entry
# (else the entry is the relay's): the relay cannot delete a row before it is written,
# so that push's deadline is at most this much past any deletion of the row.
PUSH_WINDOW_S = 10.0
# How long a receipt stays once its row is deleted: past any deadline a copy of the row
# can still carry.
RECEIPT_KEEP_MS = LEASE_MS + int(PUSH_WINDOW_S * 1000) + 10_000
# A receipt whose row could not be deleted (database down after the push) is kept this
# long; the relay deletes the row (finding the receipt) as soon as the database is back.
RECEIPT_TTL_MS = 7 * 24 * 3600 * 1000
RELAY_BATCH_SIZE = 100
CLAIM_ATTEMPTS = 5  # claims per pass while every row taken waits for an earlier one
REAPER_BATCH_SIZE = 500
REAPER_GATHER_S = 0.1
REAPER_IDLE_CLOSE_S = 1.0
# The relay leaves younger rows to the push after commit (which deletes them within
# moments); only efficiency depends on it, so host clocks may disagree.
RELAY_MIN_AGE_S = 2.0
RELAY_LOCK_TTL_MS = 10_000
RELAY_POLL_INTERVAL_S = 0.5
RELAY_STOP_TIMEOUT_S = 10.0


class OutboxNotConfigured(FlowJobsError, ValueError):
    """An enqueue names a database whose outbox no relay watches (OUTBOX_DATABASES)."""


# --------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class OutboxSettings:
    relay_in_worker: bool = True  # OUTBOX_RELAY
    push_timeout: float = 2.0  # OUTBOX_PUSH_TIMEOUT: longest wait on Redis after a commit
    max_age: float = 60.0  # OUTBOX_MAX_AGE: a check warns about older entries
    databases: tuple[str, ...] = ("default",)  # OUTBOX_DATABASES: aliases the relay watches


def _read(configured: dict[str, Any], name: str, default: Any) -> Any:
    if name in configured:
        return configured[name]
    value = os.environ.get(f"FLOWJOBS_{name}")
    return default if value in (None, "") else value


def _seconds(name: str, value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number of seconds, got {value!r}") from None
    if isinstance(value, bool) or not number > 0:
        raise ValueError(f"{name} must be a number of seconds > 0, got {value!r}")
    return number


def _aliases(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [part.strip() for part in value.split(",") if part.strip()]
    if not isinstance(value, list | tuple) or not value:
        raise ValueError(f"OUTBOX_DATABASES must be a list of database aliases, got {value!r}")
    unknown = [alias for alias in value if alias not in django_settings.DATABASES]
    if unknown:
        raise ValueError(f"OUTBOX_DATABASES names unknown database(s): {', '.join(unknown)}")
    return tuple(value)


def outbox_settings() -> OutboxSettings:
    """``FLOWJOBS["OUTBOX_*"]``, then env ``FLOWJOBS_OUTBOX_*``; raises ValueError when
    one is invalid (the system check reports it as flowjobs.E021)."""
    configured = dict(conf.settings().extra)
    defaults = OutboxSettings()
    return OutboxSettings(
        relay_in_worker=conf.as_bool(
            "OUTBOX_RELAY", _read(configured, "OUTBOX_RELAY", defaults.relay_in_worker)
        ),
        push_timeout=_seconds(
            "OUTBOX_PUSH_TIMEOUT",
            _read(configured, "OUTBOX_PUSH_TIMEOUT", defaults.push_timeout),
        ),
        max_age=_seconds("OUTBOX_MAX_AGE", _read(configured, "OUTBOX_MAX_AGE", defaults.max_age)),
        databases=_aliases(_read(configured, "OUTBOX_DATABASES", defaults.databases)),
    )


def check_settings() -> list[str]:
    """Messages for invalid ``OUTBOX_*`` settings (empty when they are fine)."""
    try:
        outbox_settings()
    except ValueError as error:
        return [f"FLOWJOBS {error}"]
    return []


# --------------------------------------------------------------------------- pushing

_pusher_lock = threading.Lock()
_pusher_state: dict[str, Any] = {"key": None, "producer": None}


def _pusher() -> FlowProducer:
    """A FlowProducer whose client waits at most OUTBOX_PUSH_TIMEOUT and never retries on
    its own (a commit must not hang on Redis; the relay retries). One per process, made
    again when the settings change."""
    current = conf.settings()
    timeout = outbox_settings().push_timeout
    key = (current.REDIS_URL, current.PREFIX, timeout)
    with _pusher_lock:
        if _pusher_state["key"] != key:
            old = _pusher_state["producer"]
            client = sync_client(
                current.REDIS_URL,
                socket_timeout=timeout,
                socket_connect_timeout=timeout,
                retry=Retry(NoBackoff(), 0),
            )
            _pusher_state.update(key=key, producer=FlowProducer(client, prefix=current.PREFIX))
            if old is not None:
                old.client.close()
        return _pusher_state["producer"]


@dataclass
class PushOutcome:
    """What one ``push_entries`` call did."""

    pushed: list[int] = field(default_factory=list)  # entry ids now in Redis (and deleted)
    refused: dict[int, str] = field(default_factory=dict)  # id -> why Redis refused it
    unavailable: str = ""  # why pushing stopped early (Redis down, hung, full)


def _encoded_of(entry: OutboxEntry) -> list[EncodedJob]:
    return [EncodedJob(**fields) for fields in entry.jobs]


def _add(producer: FlowProducer, entry: OutboxEntry, receipt: PushReceipt, staged: Any) -> Any:
    """Pushes one entry; ``staged`` is the caller's in-memory encoding when there is one
    (it rebuilds the Jobs / JobNodes to return), else the row's own."""
    if entry.kind == OutboxKind.FLOW:
        flows = staged if staged is not None else EncodedFlows(_encoded_of(entry), [])
        return producer.add_encoded(flows, receipt)
    jobs = staged if staged is not None else _encoded_of(entry)
    prefix, name = jobs[0].queue_key.split(":", 1)
    return producer.queue(name, prefix).add_encoded(jobs, receipt)


def _claim(using: str, selection: QuerySet, limit: int | None) -> list[OutboxEntry]:
    """Rows of ``selection`` this pusher may push now, in id order, locked until the
    transaction ends (PostgreSQL/MySQL/Oracle: rows another pusher holds are skipped).

    A row is left out while an earlier row of its batch is held by someone else, so that
    a transaction's entries reach Redis in the order written; when every row taken is
    held up that way, the next rows of other batches are tried (a frozen pusher holding
    one batch does not stop the others)."""
    held_up: set[uuid.UUID] = set()
    for _attempt in range(CLAIM_ATTEMPTS):
        ordered = selection.exclude(batch__in=held_up).select_for_update(skip_locked=True)
        ordered = ordered.order_by("id")
        rows = list(ordered[:limit] if limit else ordered)
        if not rows:
            return rows
        first_elsewhere = dict(
            OutboxEntry.objects.using(using)
            .filter(batch__in={row.batch for row in rows})
            .exclude(pk__in=[row.pk for row in rows])
            .values("batch")
            .annotate(first=Min("id"))
            .values_list("batch", "first")
        )
        ready = [row for row in rows if row.pk < first_elsewhere.get(row.batch, row.pk + 1)]
        if ready:
            return ready
        held_up.update(row.batch for row in rows)
    return []


def _is_unavailable(error: BaseException) -> bool:
    """Redis cannot take the push now (refused, hung, full, read-only replica, loading);
    anything else is a refusal of this entry."""
    return isinstance(error, ConnectionFailed | redis.RedisError)


def _redis_now(producer: FlowProducer, outcome: PushOutcome) -> int | None:
    """Redis's clock, taken before the rows are read: a push of a copy read after it is
    only valid until then + LEASE_MS, and a receipt outlives its row by LEASE_MS. None
    (and the reason in ``outcome``) when Redis does not answer."""
    try:
        return redis_time_ms(producer.client, producer.prefix)
    except redis.RedisError as error:
        outcome.unavailable = f"Redis unavailable: {error}"
        return None


def _receipt(entry: OutboxEntry, started_ms: int) -> PushReceipt:
    key = receipt_key(entry.prefix, entry.key.hex)
    return PushReceipt(key, started_ms + LEASE_MS, RECEIPT_TTL_MS)


def _shorten(producer: FlowProducer, receipts: list[str]) -> None:
    """Once the rows' deletion is committed: no push can need these receipts after
    RECEIPT_KEEP_MS."""
    try:
        shorten_receipts(producer.client, receipts, RECEIPT_KEEP_MS)
    except redis.RedisError:
        pass  # they keep RECEIPT_TTL_MS: memory only, never a second job


def push_entries(
    using: str, select: Callable[[QuerySet], QuerySet], *, limit: int | None = None
) -> PushOutcome:
    """The relay's push: the outbox rows ``select`` picks that no one else holds (in id
    order, at most ``limit``), pushed one by one and the pushed ones deleted, in one
    transaction. Stops at the first row Redis cannot take now; a row Redis refuses for
    good (e.g. its parent job is gone) keeps the reason in ``last_error`` and the others
    go on. Never raises for Redis being unavailable."""
    outcome = PushOutcome()
    producer = _pusher()
    started_ms = _redis_now(producer, outcome)
    if started_ms is None:
        return outcome
    receipts: list[str] = []
    with transaction.atomic(using=using):
        entries = OutboxEntry.objects.using(using)
        for entry in _claim(using, select(entries), limit):
            receipt = _receipt(entry, started_ms)
            try:
                _add(producer, entry, receipt, None)
            except AlreadyPushed:
                pass
            except PushTooLate:
                outcome.unavailable = "lease over: pushed too late, nothing written"
                break
            except (FlowJobsError, redis.RedisError) as error:
                entry.attempts += 1
                entry.last_error = f"{type(error).__name__}: {error}"[:2000]
                entry.save(update_fields=["attempts", "last_error"])
                if _is_unavailable(error):
                    outcome.unavailable = entry.last_error
                    break
                outcome.refused[entry.pk] = entry.last_error
                continue
            outcome.pushed.append(entry.pk)
            receipts.append(receipt.key)
        entries.filter(pk__in=outcome.pushed).delete()
    _shorten(producer, receipts)
    return outcome


# --------------------------------------------------------------------------- staging


def new_job_id() -> str:
    """A stable id given at enqueue time, so that a repeated push adds nothing twice."""
    return str(uuid.uuid4())


class _Batch:
    """The entries one transaction wrote through one database connection. After its
    commit each entry's hook pushes that entry, in the order they were written; the
    first failure stops the rest, which the relay then pushes in order."""

    def __init__(self, using: str) -> None:
        self.using = using
        self.key = uuid.uuid4()
        self.stopped = False
        self.started_ms: int | None = None  # Redis's clock when the pushes began
        self.started_at = 0.0  # time.monotonic() then

    def push(self, entry: OutboxEntry, staged_at: float, staged: Any = None) -> Any:
        """Pushes one committed entry; returns what it added (None if it was already in
        Redis or is left to the relay). Never raises: it runs after COMMIT."""
        if self.stopped:
            return None
        try:
            producer = _pusher()
            if self.started_ms is None:
                self.started_ms = redis_time_ms(producer.client, producer.prefix)
                self.started_at = time.monotonic()
            # The relay cannot have deleted this row before it was written: a clock read
            # soon enough after the write keeps this push within the receipt's life.
            if self.started_at - staged_at > PUSH_WINDOW_S:
                raise PushTooLate(f"entry {entry.pk} written {PUSH_WINDOW_S:g}s before the push")
            receipt = _receipt(entry, self.started_ms)
            try:
                result = _add(producer, entry, receipt, staged)
            except AlreadyPushed:
                result = None
        except Exception as error:
            self.stopped = True
            logger.warning(
                "outbox: push after commit of entry %s failed; the relay pushes it (%s: %s)",
                entry.pk,
                type(error).__name__,
                error,
            )
            return None
        _reaper.delete(self.using, entry.pk, receipt.key)
        return result


@dataclass
class _PushAfterCommit:
    """The on-commit hook of one entry (a savepoint rollback drops it with the row)."""

    batch: _Batch
    entry: OutboxEntry
    staged_at: float

    def __call__(self) -> None:
        self.batch.push(self.entry, self.staged_at)


_BATCH_ATTRIBUTE = "_flowjobs_outbox_batch"


def _current_batch(using: str) -> _Batch:
    """The batch of the transaction in progress on ``using``: the one whose hooks are
    still waiting for this transaction's commit, else a new one."""
    connection = transaction.get_connection(using)
    batch: _Batch | None = getattr(connection, _BATCH_ATTRIBUTE, None)
    waiting = (getattr(hook, "batch", None) for _, hook, *_ in connection.run_on_commit)
    if batch is None or not any(owner is batch for owner in waiting):
        batch = _Batch(using)
        setattr(connection, _BATCH_ATTRIBUTE, batch)
    return batch


class _Reaper:
    """Deletes pushed rows off the caller's path, many per commit, then shortens their
    receipts (one daemon thread per process). A row it never gets to (the process
    ended, the database failed) is pushed again by the relay, finds its receipt, and
    is deleted then."""

    def __init__(self) -> None:
        self._pending: queue.SimpleQueue[tuple[str, int, str]] = queue.SimpleQueue()
        self._busy = threading.Condition()
        self._in_flight = 0
        self._thread: threading.Thread | None = None
        self._pid = 0

    def delete(self, using: str, pk: int, receipt: str) -> None:
        with self._busy:
            self._in_flight += 1
            if self._thread is None or self._pid != os.getpid():  # first use, or forked
                self._pid = os.getpid()
                self._thread = threading.Thread(
                    target=self._run, name="flowjobs-outbox-reaper", daemon=True
                )
                self._thread.start()
        self._pending.put((using, pk, receipt))

    def wait_idle(self, timeout: float) -> bool:
        """Blocks until every row handed over so far is deleted (or given up)."""
        with self._busy:
            return self._busy.wait_for(lambda: self._in_flight == 0, timeout)

    def _run(self) -> None:
        while True:
            try:
                first = self._pending.get(timeout=REAPER_IDLE_CLOSE_S)
            except queue.Empty:
                connections.close_all()  # this thread's: idle, hold none
                first = self._pending.get()
            # Gather for a moment: one commit (one fsync) for many rows, so the reaper
            # adds little to the commits of the transactions that enqueue.
            items = [first]
            deadline = time.monotonic() + REAPER_GATHER_S
            while len(items) < REAPER_BATCH_SIZE:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    items.append(self._pending.get(timeout=remaining))
                except queue.Empty:
                    break
            try:
                # as around a request: a connection a failed commit left out of autocommit
                # would take every later delete into a transaction nobody commits
                tidy_connections(always=True)
                self._reap(items)
            except Exception:
                logger.exception("outbox: deleting %d pushed entries failed", len(items))
            finally:
                with self._busy:
                    self._in_flight -= len(items)
                    self._busy.notify_all()

    def _reap(self, items: list[tuple[str, int, str]]) -> None:
        by_database: dict[str, list[tuple[int, str]]] = {}
        for using, pk, receipt in items:
            by_database.setdefault(using, []).append((pk, receipt))
        for using, rows in by_database.items():
            try:
                pks = [pk for pk, _ in rows]
                deleted, _ = OutboxEntry.objects.using(using).filter(pk__in=pks).delete()
                if deleted < len(pks):
                    _not_all_deleted(using, pks, deleted)
            except DatabaseError:
                logger.warning("outbox: could not delete %d pushed entries", len(rows))
                connections[using].close()
                continue
            _shorten(_pusher(), [receipt for _, receipt in rows])


_reaper = _Reaper()


def _not_all_deleted(using: str, pks: list[int], deleted: int) -> None:
    """Logs pushed entries the reaper's delete did not find: gone already (the relay
    pushed and deleted them first), or rows its connection could not see (the relay
    pushes them again and deletes them), with that connection's state: a connection left
    out of autocommit once made every delete of the reaper go uncommitted, unseen."""
    left = list(OutboxEntry.objects.using(using).filter(pk__in=pks).values_list("pk", flat=True))
    connection = connections[using]
    logger.info(
        "outbox: the reaper deleted %d of %d pushed entries %s; still there: %s "
        "(its connection: database %s, autocommit %s, in a transaction %s)",
        deleted,
        len(pks),
        pks,
        left or "none",
        connection.settings_dict.get("NAME"),
        connection.get_autocommit(),
        connection.in_atomic_block,
    )


def stage(kind: OutboxKind, encoded: list[EncodedJob] | EncodedFlows, using: str | None) -> Any:
    """Writes one outbox entry in the current transaction of ``using`` and arranges
    its push after the commit. Outside a transaction the entry is committed and pushed
    at once: returns what the push added (Jobs, or [JobNode]), or None when the push
    waits for the commit or for the relay."""
    alias = using or "default"
    watched = outbox_settings().databases
    if alias not in watched:
        raise OutboxNotConfigured(
            f'enqueue on commit with using="{alias}": no relay watches that database; '
            f'add "{alias}" to FLOWJOBS["OUTBOX_DATABASES"] (now {list(watched)})'
        )
    jobs = encoded.jobs if isinstance(encoded, EncodedFlows) else encoded
    in_transaction = transaction.get_connection(alias).in_atomic_block
    batch = _current_batch(alias) if in_transaction else _Batch(alias)
    entry = OutboxEntry.objects.using(alias).create(
        batch=batch.key,
        prefix=conf.settings().PREFIX,
        kind=kind,
        jobs=[asdict(job) for job in jobs],
    )
    staged_at = time.monotonic()
    if not in_transaction:
        return batch.push(entry, staged_at, encoded)
    transaction.on_commit(_PushAfterCommit(batch, entry, staged_at), using=alias, robust=True)
    return None


# --------------------------------------------------------------------------- relay


def relay_lock_key(prefix: str) -> str:
    return f"{prefix}:flowjobs:outbox-relay-lock"


def relay_heartbeat_ms() -> int | None:
    """Milliseconds left on the active relay's lock (its heartbeat); None when no relay
    holds it. Raises redis errors when Redis does not answer."""
    remaining = _pusher().client.pttl(relay_lock_key(conf.settings().PREFIX))
    return remaining if remaining and remaining > 0 else None


def backlog(using: str = "default") -> tuple[int, float | None]:
    """(entries waiting under this deployment's prefix, age in seconds of the oldest)."""
    rows = OutboxEntry.objects.using(using).filter(prefix=conf.settings().PREFIX)
    count = rows.count()
    oldest = rows.order_by("id").values_list("created_at", flat=True).first()
    if oldest is None:
        return count, None
    return count, max(0.0, (timezone.now() - oldest).total_seconds())


class Relay:
    """Pushes what the after-commit pushes left: one active relay per deployment (a
    Redis lock with a token, renewed while it works); the others stand by."""

    def __init__(
        self,
        databases: Sequence[str] | None = None,
        *,
        batch_size: int = RELAY_BATCH_SIZE,
        poll_interval: float = RELAY_POLL_INTERVAL_S,
        lock_ttl_ms: int = RELAY_LOCK_TTL_MS,
        min_age: float = RELAY_MIN_AGE_S,
    ) -> None:
        from .mirror import MirrorLock

        self.databases = tuple(databases or outbox_settings().databases)
        unknown = [alias for alias in self.databases if alias not in django_settings.DATABASES]
        if unknown:
            raise ValueError(f"unknown database alias(es): {', '.join(unknown)}")
        self.batch_size = batch_size
        self.poll_interval = poll_interval
        self.min_age = min_age
        self.prefix = conf.settings().PREFIX
        self.client = _pusher().client
        self.lock = MirrorLock(self.client, relay_lock_key(self.prefix), lock_ttl_ms)
        self.pushed = 0
        self._waiting = False

    def step(self, min_age: float | None = None) -> PushOutcome:
        """One pass over every watched database (rows older than ``min_age`` seconds);
        stops a database at the first entry Redis cannot take now."""
        age = self.min_age if min_age is None else min_age
        total = PushOutcome()
        for alias in self.databases:

            def select(rows: QuerySet) -> QuerySet:
                rows = rows.filter(prefix=self.prefix)
                if age > 0:
                    rows = rows.filter(created_at__lt=timezone.now() - timedelta(seconds=age))
                return rows

            # the common pass finds nothing: one query, not Redis's clock and a locking one
            if not select(OutboxEntry.objects.using(alias)).exists():
                continue
            outcome = push_entries(alias, select, limit=self.batch_size)
            total.pushed += outcome.pushed
            total.refused.update(outcome.refused)
            total.unavailable = total.unavailable or outcome.unavailable
        self.pushed += len(total.pushed)
        return total

    def drain(self) -> int:
        """Pushes every row (whatever its age) until nothing is left that Redis takes;
        returns how many were pushed."""
        before = self.pushed
        while True:
            outcome = self.step(min_age=0)
            if not outcome.pushed or outcome.unavailable:
                return self.pushed - before

    def _report(self, unavailable: str) -> None:
        """Logs when Redis stops or starts taking pushes (once, not every poll)."""
        if unavailable and not self._waiting:
            logger.warning("outbox relay: waiting for Redis (%s)", unavailable)
        elif not unavailable and self._waiting:
            logger.info("outbox relay: Redis takes pushes again")
        self._waiting = bool(unavailable)

    def run(self, stop_event: threading.Event) -> None:
        """Relays until ``stop_event`` is set, holding the lock while it works."""
        try:
            while not stop_event.is_set():
                try:
                    if not self.lock.acquire():
                        stop_event.wait(self.lock.wait_hint())
                        continue
                    tidy_connections(always=True)
                    outcome = self.step()
                    self._report(outcome.unavailable)
                    if len(outcome.pushed) < self.batch_size or outcome.unavailable:
                        stop_event.wait(self.poll_interval)
                except redis.RedisError as error:
                    self._report(f"{type(error).__name__}: {error}")
                    stop_event.wait(self.poll_interval)
                except Exception:
                    logger.exception("outbox relay step failed; retrying")
                    stop_event.wait(self.poll_interval * 4)
        finally:
            self.lock.release()


def start_in_worker(stop_event: threading.Event) -> threading.Thread | None:
    """Starts the relay in a daemon thread of ``runworker`` unless OUTBOX_RELAY is off;
    the lock keeps one active per deployment. Ends when ``stop_event`` is set."""
    if not outbox_settings().relay_in_worker:
        return None
    relay = Relay()
    thread = threading.Thread(
        target=relay.run, args=(stop_event,), name="flowjobs-outbox-relay", daemon=True
    )
    thread.start()

    def finish() -> None:
        # Let it release the lock so a standby takes over now, not after the TTL.
        if stop_event.is_set():
            thread.join(RELAY_STOP_TIMEOUT_S)

    atexit.register(finish)
    return thread
