"""The projector: follows every queue's events stream and applies it in batches."""

from __future__ import annotations

import logging
import threading
import time
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

import redis

from ..database import tidy_connections
from ..engine.keys import events_max_length, is_wrong_type
from ..lease import FencedLease, fenced_atomic
from ..models import StreamPosition
from ..priority import lower_this_thread
from .client import redis_client
from .discovery import discover_queues_paced, mirrorable_queues
from .history import prune_history
from .observation import Observation
from .parsing import compare_ids, entry_ms, field_value
from .positions import save_positions, stream_tail
from .reconcile import reconcile_queue
from .repair import answer_reconcile_requests
from .roots import RootResolver
from .settings import MirrorSettings, mirror_settings
from .store import read_hashes, store

logger = logging.getLogger("flowjobs.mirror")

# A batch is applied this many jobs at a time (a transaction each); between chunks the
# projector reads on, so a long batch (a burst: 100 ms a chunk here) does not leave the
# events stream unread long enough for workers to trim it past the projector, which would
# cost a reconcile (job hashes read twice, in Redis time the workers need).
APPLY_CHUNK = 1000
# What is read ahead is held in memory up to this many batches (of MIRROR_BATCH_SIZE
# events): 200,000 events, about 50,000 jobs and 20 MB by default. Past that the stream
# may be trimmed past, and the queue is reconciled as before.
READ_AHEAD_BATCHES = 40
# While events arrive at BUSY_EVENTS_PER_S or more (workers draining a backlog), run()
# applies them only once the burst slows down, it has held them MIRROR_BURST_LAG_S, or they
# fill half the read-ahead: the CPU and Redis time that applying takes (the job hashes,
# the rows) is what the workers want during the burst. Every DEFER_READ_S it looks at the
# streams' lengths and reads them only when one would otherwise fill half of what it keeps
# (runworker's EVENTS_MAX_LENGTH, 100,000 events: a 25,000-job burst is read after it
# ends; Node's default 10,000 means a read every look or two at such rates). The rows lag
# the burst by that much; at lower rates each batch is applied as it is read.
DEFER_READ_S = 0.05
# A queue trimmed past is held off while its events keep coming this fast (a default
# stream's worth a second: 2,500 jobs/s of a worker's four events each), up to
# HOLD_WHILE_BUSY_S in all; then it is reconciled even in the middle of its burst.
BUSY_EVENTS_PER_S = 10_000
# Events at BACKLOG_EVENTS_PER_S or more while some queue has BACKLOG_JOBS or more waiting
# (its wait list and prioritized set) are a burst too, however slow the machine: workers
# draining a backlog want every CPU and Redis moment the mirror would take. A burst goes
# on while its events come at BACKLOG_EVENTS_PER_S, the backlog's last jobs included.
BACKLOG_EVENTS_PER_S = 1_000
BACKLOG_JOBS = 1_000
HOLD_WHILE_BUSY_S = 15.0
# A queue whose events key holds another kind of value than a stream (another client's)
# is left out of the reads this long, then looked at again.
NOT_A_STREAM_HOLD_S = 30.0
# While events gather (see Projector.gather), how often the streams' lengths are checked.
GATHER_CHECK_S = 0.02


@dataclass
class _Stream:
    prefix: str
    queue: str
    last_id: str = "0-0"
    entries_read: int | None = 0
    # Recoveries (after a trim) since the projector last read to the stream's end, and
    # until when the stream is held off because the last one was outrun (monotonic s).
    recoveries: int = 0
    held_until: float = 0.0
    # The hold in progress (see Projector._hold): when it began (monotonic s), its last
    # length, and the stream's entries-added when that began.
    hold_began: float | None = None
    hold_length: float = 0.0
    hold_mark: int | None = None
    # The stream's entries-added at the last look (a read, or a deferred burst's look).
    added_seen: int | None = None

    @property
    def key(self) -> str:
        return f"{self.prefix}:{self.queue}:events"


@dataclass
class _Fold:
    """Events read and not yet applied: what they say of each job, and each stream's
    position after them."""

    observations: dict[tuple[str, str, str], Observation] = field(default_factory=dict)
    moved: dict[tuple[str, str], tuple[str, int | None]] = field(default_factory=dict)
    to_reconcile: list[_Stream] = field(default_factory=list)  # `cleaned`: no per-job events
    lost: list[_Stream] = field(default_factory=list)  # trimmed past their position
    events: int = 0
    began: float = field(default_factory=time.monotonic)  # the first read into it

    def add(self, stream: _Stream, entries: list[Any]) -> None:
        """Folds ``entries``, the next of ``stream``, in and moves the stream past them."""
        for entry_id, fields in entries:
            # BullMQ writes "event" then "jobId" first; other producers may not
            if len(fields) > 3 and fields[0] == "event" and fields[2] == "jobId":
                event, job_id = fields[1], fields[3]
            else:
                event, job_id = field_value(fields, "event") or "", field_value(fields, "jobId")
            if event == "cleaned":
                if stream not in self.to_reconcile:
                    self.to_reconcile.append(stream)
                continue
            if not job_id:
                continue
            ident = (stream.prefix, stream.queue, job_id)
            obs = self.observations.get(ident)
            if obs is None:
                obs = self.observations[ident] = Observation(*ident)
            obs.apply_event(event, fields, entry_id)
        self.events += len(entries)
        stream.last_id = entries[-1][0]
        if stream.entries_read is not None:
            stream.entries_read += len(entries)
        self.moved[(stream.prefix, stream.queue)] = (stream.last_id, stream.entries_read)


class Projector:
    """Follows the events streams of every queue under one prefix.

    Call :meth:`step` repeatedly (or :meth:`run`). Each step reads up to
    ``batch_size`` events per stream, applies them, and commits the rows with the
    new stream positions in one transaction. :meth:`run` waits ``coalesce_ms``
    after a batch that did not fill up, so that at low rates one transaction
    carries many jobs instead of one each.
    """

    def __init__(
        self,
        client: redis.Redis | None = None,
        prefix: str | None = None,
        *,
        config: MirrorSettings | None = None,
        lease: FencedLease | None = None,
    ) -> None:
        self.config = config or mirror_settings()
        self.client = client or redis_client(self.config.redis_url)
        # The same connections, with XREAD's entries left as Redis sends them (see
        # _entries_by_stream): a burst is read while workers want the CPU.
        self._reader = redis.Redis(connection_pool=self.client.connection_pool)
        self._reader.set_response_callback("XREAD", _entries_by_stream)
        self.prefix = prefix or self.config.prefix
        self.lease = lease
        self.streams: dict[str, _Stream] = {}
        self._ahead: _Fold | None = None  # read ahead of the batch being applied
        self._positions_stale = False  # a step failed: reload them (see step())
        self.resolver = RootResolver(self.client)
        self._discover_due = -1e18
        self._reconciled_at = time.monotonic()
        self._pruned_at = -1e18
        self._requests_checked_at = -1e18
        self.events_applied = 0
        self.batches_applied = 0
        self.reconciles = 0
        # Whether events arrive slower than batches fill: then run() lets them gather.
        self.trickling = False
        # Whether a queue whose stream outran a recovery is held off before the next
        # (run() does; catch_up(), which must reach the end, does not).
        self.hold_off = False
        # Whether the last step read every stream to its end.
        self.caught_up = False
        # Whether bursts are read without being applied, for a moment (run() does;
        # catch_up(), which must apply everything, does not), and whether the last step
        # did so: then run() reads again after DEFER_READ_S.
        self.defer_bursts = False
        self.deferring = False
        self._read_at = -1e18  # when the last step read (monotonic s)
        self._looked_at = -1e18  # when the streams' entries-added were last seen
        self._backlog = 0  # the most jobs some stream's queue had waiting, at the last read

    # -- bookkeeping ------------------------------------------------------------

    def _heartbeat(self) -> None:
        if self.lease is not None:
            self.lease.keep()

    def _transaction(self) -> AbstractContextManager[None]:
        """A transaction that commits only while this projector's lease is the newest."""
        return fenced_atomic(self.lease)

    def load_positions(self) -> None:
        """(Re)load every queue's position from the database."""
        self.streams = {}
        for position in StreamPosition.objects.filter(prefix=self.prefix):
            stream = _Stream(self.prefix, position.queue, position.last_id, position.entries_read)
            self.streams[stream.key] = stream
        self._ahead = None
        self._positions_stale = False
        self._discover_due = -1e18

    def discover(self, force: bool = False) -> None:
        """Adds the queues that appeared since the last pass (``discover_interval`` seconds
        apart, or more over a big keyspace: see ``discover_queues_paced``)."""
        if not force and time.monotonic() < self._discover_due:
            return
        found, self._discover_due = discover_queues_paced(
            self.client, self.prefix, self.config.discover_interval
        )
        for queue in mirrorable_queues(self.client, self.prefix, found):
            stream = _Stream(self.prefix, queue)
            self.streams.setdefault(stream.key, stream)

    # -- one cycle --------------------------------------------------------------

    def step(self, block_ms: int | None = None) -> int:
        """Apply the next batch; block up to ``block_ms`` when idle. Returns events applied.

        The batch is what was read ahead while the last one was applied (see ``_apply``)
        and what the streams hold beyond it, up to READ_AHEAD_BATCHES batches. A step that
        fails leaves the streams' positions in memory past events it did not apply: the
        next one starts from the positions committed in the database."""
        if self._positions_stale:
            self.load_positions()
        try:
            return self._step(block_ms)
        except BaseException:
            self._positions_stale = True
            raise

    def _step(self, block_ms: int | None) -> int:
        self._heartbeat()
        self.discover()
        burst_over = False
        if self.deferring:
            look = self._look_at_burst()
            if look == "wait":
                self.caught_up = False
                return 0
            burst_over = look == "over"
        fold, self._ahead = self._ahead or _Fold(), None
        streams = self._readable(fold)
        self.caught_up = False
        before, read_at, self._read_at = fold.events, self._read_at, time.monotonic()
        full = self._read_on(streams, fold)
        rate = (fold.events - before) / max(self._read_at - read_at, 1e-3)
        # read every stream to its end: none held off, trimmed past or with more to read
        read_to_end = not full and not fold.lost and len(streams) == len(self.streams)
        self.deferring = not burst_over and self._defer(fold, rate)
        if self.deferring:
            self._ahead = fold
            self.trickling = False
            self.caught_up = read_to_end
            return 0
        if not fold.events:
            if fold.lost:
                self._recover(fold.lost)
                return 0
            if not streams:
                return 0
            self.caught_up = read_to_end
            wait = self.config.block_ms if block_ms is None else block_ms
            streams = self._readable(fold)  # less any the reads held off
            if wait > 0 and streams:
                woke = self.client.xread(
                    {stream.key: stream.last_id for stream in streams}, count=1, block=wait
                )
                self.trickling = bool(woke)
            return 0
        self.trickling = not full
        applied = self._apply(fold)
        if fold.lost:
            self._recover(fold.lost)
        self.caught_up = read_to_end
        return applied

    def _defer(self, fold: _Fold, rate: float) -> bool:
        """Whether to leave ``fold`` unapplied for now and only read on (see
        MIRROR_BURST_LAG_S): events arrive as in a burst (see ``_busy``; one the last
        step deferred goes on), ``fold`` is under
        half the read-ahead and younger than MIRROR_BURST_LAG_S, and nothing in it needs a
        recovery or a reconcile."""
        return (
            self.defer_bursts
            and bool(fold.events)
            and _busy(rate, self._backlog, self.deferring)
            and not fold.lost
            and not fold.to_reconcile
            and fold.events < self._read_ahead_limit // 2
            and time.monotonic() - fold.began < self.config.burst_lag_s
        )

    def _look_at_burst(self) -> str:
        """While a burst is deferred, whether to leave its streams unread until the next
        look, DEFER_READ_S on ("wait"), to read them ("read"), or to read and apply them
        ("over": events no longer come as in a burst). Reading later reads the
        same events, after the burst, when the workers no longer want the CPU. A stream
        can wait while its unread events, with twice what came since the last look, stay
        under half of what it keeps (its meta ``opts.maxLenEvents``; runworker writes
        EVENTS_MAX_LENGTH there). One round trip."""
        fold = self._ahead
        if (
            fold is None
            or time.monotonic() - fold.began >= self.config.burst_lag_s
            or fold.events >= self._read_ahead_limit // 2
        ):
            return "read"
        streams = self._readable(fold)
        pipe = self.client.pipeline(transaction=False)
        for stream in streams:
            _look_at(pipe, stream)
            pipe.hget(f"{stream.prefix}:{stream.queue}:meta", "opts.maxLenEvents")
        replies = pipe.execute(raise_on_error=False)
        now = time.monotonic()
        elapsed, self._looked_at = now - self._looked_at, now
        came, can_wait = 0, True
        before = [stream.added_seen for stream in streams]
        infos, backlog = _seen(streams, replies, 4)
        for stream, seen, info, cap in zip(streams, before, infos, replies[3::4], strict=True):
            if isinstance(info, Exception):
                can_wait = can_wait and stream.last_id == "0-0"  # none yet, or deleted
                continue
            if stream.added_seen is None or seen is None or stream.entries_read is None:
                can_wait = False  # Redis before 7.0, or a stream the last read missed
                continue
            new = stream.added_seen - seen
            came += new
            unread = stream.added_seen - stream.entries_read
            cap = events_max_length(None if isinstance(cap, Exception) else cap)
            if self._lost(stream, info) or unread + 2 * new >= cap // 2:
                can_wait = False
        if not _busy(came / max(elapsed, 1e-3), backlog, in_burst=True):
            return "over"
        return "wait" if can_wait else "read"

    def _read(self, streams: list[_Stream], fold: _Fold) -> bool:
        """Reads the next ``batch_size`` events of each stream into ``fold`` (a stream
        trimmed past its position goes to ``fold.lost`` instead); returns whether any
        stream had that many or more to read."""
        pipe = self._reader.pipeline(transaction=True)
        for stream in streams:
            _look_at(pipe, stream)
        pipe.xread({stream.key: stream.last_id for stream in streams}, count=self.config.batch_size)
        replies = pipe.execute(raise_on_error=False)
        read = replies.pop()
        infos, self._backlog = _seen(streams, replies, 3)
        if isinstance(read, Exception):
            # One XREAD reads every stream: a key that is not one fails it for all.
            pairs = zip(streams, infos, strict=True)
            foreign = [stream for stream, info in pairs if is_wrong_type(info)]
            if not foreign:
                raise read
            for stream in foreign:
                self._hold_not_a_stream(stream)
            rest = [stream for stream in streams if stream not in foreign]
            return self._read(rest, fold) if rest else False
        entries_by_key = read  # {} when there is nothing (see _entries_by_stream)
        full = False
        self._looked_at = time.monotonic()
        for stream, info in zip(streams, infos, strict=True):
            if self._lost(stream, info):
                fold.lost.append(stream)
                continue
            entries = entries_by_key.get(stream.key, ())
            if len(entries) < self.config.batch_size:
                stream.recoveries = 0  # read to its end: caught up
            else:
                full = True
            if entries:
                fold.add(stream, entries)
        return full

    def _hold_not_a_stream(self, stream: _Stream) -> None:
        stream.held_until = time.monotonic() + NOT_A_STREAM_HOLD_S
        logger.warning(
            "events key %s is not a stream (another client's value): queue %s is not "
            "mirrored; looking again in %.0f s",
            stream.key,
            stream.queue,
            NOT_A_STREAM_HOLD_S,
        )

    def _readable(self, fold: _Fold) -> list[_Stream]:
        """The streams to read now: not held off, not trimmed past (in ``fold``)."""
        now = time.monotonic()
        return [
            stream
            for stream in self.streams.values()
            if stream.held_until <= now and stream not in fold.lost
        ]

    def _read_on(self, streams: list[_Stream], fold: _Fold) -> bool:
        """Reads ``streams`` into ``fold`` a batch at a time while some stream has a full
        batch to give, up to READ_AHEAD_BATCHES batches in ``fold``; returns whether some
        stream still had a full batch at the last read."""
        full = True
        while full and fold.events < self._read_ahead_limit:
            streams = [stream for stream in streams if stream not in fold.lost]
            if not streams:
                return False
            full = self._read(streams, fold)
        return full

    @property
    def _read_ahead_limit(self) -> int:
        """Events held read and unapplied at most (READ_AHEAD_BATCHES batches)."""
        return READ_AHEAD_BATCHES * self.config.batch_size

    def _read_ahead(self) -> None:
        """Between the chunks of a long batch: reads on to the streams' ends into the next
        batch, so that the events stream is not trimmed past events the projector has yet
        to apply (a burst faster than it applies them). Holds at most READ_AHEAD_BATCHES
        batches."""
        ahead = self._ahead or _Fold()
        self._read_on(self._readable(ahead), ahead)
        if ahead.events or ahead.lost:
            self._ahead = ahead

    def _lost(self, stream: _Stream, info: Any) -> bool:
        """Whether entries after our position are gone (trimmed, or the stream deleted)."""
        if isinstance(info, Exception):
            # No stream: fine for a queue we never read; otherwise it was deleted.
            return stream.last_id != "0-0"
        length = int(info.get("length") or 0)
        added = info.get("entries-added")
        last_generated = str(info.get("last-generated-id") or "0-0")
        if compare_ids(last_generated, stream.last_id) < 0:
            return True  # recreated with older ids
        if added is not None and stream.entries_read is not None:
            added = int(added)
            if added < stream.entries_read:
                return True  # recreated
            return added - length > stream.entries_read
        first = info.get("first-entry")
        if not first:
            return compare_ids(last_generated, stream.last_id) > 0
        return compare_ids(first[0], stream.last_id) > 0 and stream.last_id != "0-0"

    def _reconcile(self, stream: _Stream, changed_since_ms: int | None = None) -> None:
        reconcile_queue(
            self.client,
            stream.prefix,
            stream.queue,
            resolver=self.resolver,
            heartbeat=self._heartbeat,
            atomic=self._transaction,
            changed_since_ms=changed_since_ms,
        )

    def _recover(self, lost: list[_Stream]) -> None:
        for stream in lost:
            # the stream's end now: a hold's measure of the burst, or the reconcile's end
            tail = stream_tail(self.client, stream.prefix, stream.queue) or ("0-0", 0)
            if self.hold_off and self._hold(stream, tail[1]):
                continue
            stream.held_until = 0.0
            stream.hold_began = None
            logger.info(
                "events stream %s was trimmed past %s: reconciling queue %s",
                stream.key,
                stream.last_id,
                stream.queue,
            )
            # only what changed since the last event applied: a rewrite of the history
            # would take longer than the stream holds at the rate that trimmed it, and
            # trim past us again
            self._reconcile(stream, changed_since_ms=entry_ms(stream.last_id))
            stream.last_id, stream.entries_read = tail
            with self._transaction():
                save_positions({(stream.prefix, stream.queue): tail})
            self.reconciles += 1
            stream.recoveries += 1

    def _hold(self, stream: _Stream, added: int | None) -> bool:
        """Whether to hold off a queue whose stream was trimmed past (its entries-added
        now: ``added``), instead of reconciling it now.

        Trimmed past: the queue's events came faster than this projector applied them (a
        burst, workers draining a backlog). A reconcile now would read job hashes in the
        middle of it, for CPU and Redis time the workers need, and be outrun again. The
        queue is held off 0.5 s (doubling up to 8 s while recoveries keep being outrun),
        and again, doubling, while events kept coming at BUSY_EVENTS_PER_S or more during
        the last hold (the burst goes on), up to HOLD_WHILE_BUSY_S in all; then it is
        reconciled."""
        now = time.monotonic()
        if stream.hold_began is None:
            stream.hold_began = now
            hold = min(0.5 * 2**stream.recoveries, 8.0)
            what = "again" if stream.recoveries else ""
        else:
            busy = (
                added is not None
                and stream.hold_mark is not None
                and added - stream.hold_mark >= BUSY_EVENTS_PER_S * stream.hold_length
            )
            if not busy or now - stream.hold_began >= HOLD_WHILE_BUSY_S:
                return False
            hold = min(2 * stream.hold_length, 8.0)
            what = "still busy"
        stream.hold_length = hold
        stream.hold_mark = added
        stream.held_until = now + hold
        logger.info(
            "events stream %s was trimmed past %s%s: holding off %.1f s",
            stream.key,
            stream.last_id,
            f" ({what})" if what else "",
            hold,
        )
        return True

    def _apply(self, fold: _Fold) -> int:
        """Reads the jobs' hashes and writes their rows, a chunk at a time (a transaction
        each, the streams' positions with the last), reading ahead between chunks."""
        pending = list(fold.observations.values())
        for start in range(0, max(len(pending), 1), APPLY_CHUNK):
            chunk = pending[start : start + APPLY_CHUNK]
            last = start + APPLY_CHUNK >= len(pending)
            read_hashes(self.client, chunk)
            with self._transaction():
                store(self.client, chunk, self.resolver)
                if last:
                    save_positions(fold.moved)
            if not last:
                self._heartbeat()
                self._read_ahead()
        self.events_applied += fold.events
        self.batches_applied += 1
        for stream in fold.to_reconcile:
            self._reconcile(stream)
        return fold.events

    def housekeeping(self) -> None:
        """Periodic full reconcile (drain/obliterate emit no events), the reconciles asked
        for (``syncjobs --once`` while this projector holds the lease), history pruning.
        The periodic reconcile waits while a burst is deferred: it reads every job hash,
        which the workers' burst wants the Redis time of, and the burst's events, applied
        after it, would take rows back to states older than the ones it wrote."""
        interval = self.config.reconcile_interval
        due = interval is not None and time.monotonic() - self._reconciled_at >= interval
        if due and not self.deferring:
            self._reconciled_at = time.monotonic()
            for stream in list(self.streams.values()):
                self._heartbeat()
                self._reconcile(stream)
        if self.lease is not None and time.monotonic() - self._requests_checked_at >= 1.0:
            self._requests_checked_at = time.monotonic()
            answer_reconcile_requests(self.lease, self.prefix)
        bounded = self.config.history_age is not None or self.config.history_count is not None
        if bounded and time.monotonic() - self._pruned_at >= self.config.prune_interval:
            self._pruned_at = time.monotonic()
            pruned = prune_history(self.config.history_age, self.config.history_count)
            if pruned:
                logger.info("pruned %d mirrored jobs beyond the history bounds", pruned)

    @property
    def unapplied_events(self) -> int:
        """Events read (past the streams' positions in memory) and not yet applied."""
        return self._ahead.events if self._ahead is not None else 0

    def held_for(self) -> float:
        """Seconds until a held-off stream (see ``_recover``) is read again, when every
        stream is held off; else 0."""
        if not self.streams:
            return 0.0
        first = min(stream.held_until for stream in self.streams.values())
        return max(first - time.monotonic(), 0.0)

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
        return any(
            compare_ids(str(info.get("last-generated-id") or "0-0"), stream.last_id) > 0
            for stream, info in self._stream_infos()
        )

    def _stream_infos(self) -> list[tuple[_Stream, dict[str, Any]]]:
        """XINFO STREAM of every stream that exists, in one round trip."""
        streams = list(self.streams.values())
        pipe = self.client.pipeline(transaction=False)
        for stream in streams:
            pipe.xinfo_stream(stream.key)
        replies = pipe.execute(raise_on_error=False) if streams else []
        return [
            (stream, info)
            for stream, info in zip(streams, replies, strict=True)
            if not isinstance(info, Exception)
        ]

    def run(self, stop_event: threading.Event, idle_when_caught_up: bool = False) -> None:
        """Project until ``stop_event`` is set (or the lease is lost). With
        ``idle_when_caught_up``, lower this thread to idle CPU priority once every stream
        was read to its end (runworker's services process; see flowjobs.priority)."""
        self.load_positions()
        self.hold_off = True
        self.defer_bursts = True
        coalesce = self.config.coalesce_ms / 1000
        while not stop_event.is_set():
            tidy_connections(always=True)
            self.step()
            if idle_when_caught_up and self.caught_up:
                idle_when_caught_up = False
                if lower_this_thread():
                    logger.info("mirror caught up: its thread now runs at idle CPU priority")
            self.housekeeping()
            held = self.held_for()
            if held > 0:
                # in slices that keep the lease (step() renews it)
                stop_event.wait(min(held, self.config.lock_ttl_ms / 3000))
            elif self.deferring:
                stop_event.wait(DEFER_READ_S)
            elif coalesce and self.trickling:
                self.gather(stop_event, coalesce)

    def gather(self, stop_event: threading.Event, seconds: float) -> None:
        """Lets events gather for up to ``seconds``: at low rates, where they trickle in
        a job at a time, one transaction (and HGETALL) per batch instead of one per event.
        A burst ends the wait once some stream has half a batch to read: over a whole
        wait it could fill the stream, and the workers' trim would pass the projector."""
        deadline = time.monotonic() + seconds
        half_batch = max(self.config.batch_size // 2, 1)
        while not stop_event.wait(min(GATHER_CHECK_S, max(deadline - time.monotonic(), 0))):
            if time.monotonic() >= deadline or not self.streams:
                return
            for stream, info in self._stream_infos():
                added = info.get("entries-added")
                if added is None or stream.entries_read is None:
                    continue
                if int(added) - stream.entries_read >= half_batch:
                    return


def _busy(events_per_s: float, backlog: int, in_burst: bool = False) -> bool:
    """Whether events that come this fast say workers are busy: BUSY_EVENTS_PER_S or
    more, or BACKLOG_EVENTS_PER_S or more while some queue has BACKLOG_JOBS waiting or
    (`in_burst`) a burst is going on: its last jobs come as fast as the others."""
    return events_per_s >= BUSY_EVENTS_PER_S or (
        events_per_s >= BACKLOG_EVENTS_PER_S and (in_burst or backlog >= BACKLOG_JOBS)
    )


def _look_at(pipe: Any, stream: _Stream) -> None:
    """Queues what a look at ``stream`` reads (see ``_seen``): its XINFO STREAM and how
    many jobs its queue has waiting (wait list, prioritized set)."""
    pipe.xinfo_stream(stream.key)
    pipe.llen(f"{stream.prefix}:{stream.queue}:wait")
    pipe.zcard(f"{stream.prefix}:{stream.queue}:prioritized")


def _seen(streams: list[_Stream], replies: list[Any], step: int) -> tuple[list[Any], int]:
    """Takes in the replies of ``_look_at`` for each stream (``step`` replies apart): sets
    each stream's ``added_seen``; returns their XINFO replies and the most jobs some
    queue has waiting."""
    infos, backlog = [], 0
    for index, stream in enumerate(streams):
        info, waiting, prioritized = replies[index * step : index * step + 3]
        added = None if isinstance(info, Exception) else info.get("entries-added")
        stream.added_seen = None if added is None else int(added)
        infos.append(info)
        counts = [n for n in (waiting, prioritized) if isinstance(n, int)]
        backlog = max(backlog, sum(counts))
    return infos, backlog


def _entries_by_stream(reply: Any, **_options: Any) -> dict[str, list[Any]]:
    """XREAD's reply (RESP2 or RESP3) as {stream key: [[entry id, [field, value, ...]],
    ...]}. The fields stay a flat list: redis-py's own parsing makes a dict of every
    entry, which took a third of the projector's CPU while it read a burst."""
    if not reply:
        return {}
    return dict(reply.items() if isinstance(reply, dict) else reply)
