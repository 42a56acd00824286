"""Queue: adding jobs, reading them, and managing the queue as a whole."""

from __future__ import annotations

import copy
import uuid
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import redis
import redis.asyncio

from . import cancellation, groups, schedulers, scripts, telemetry
from .connection import Connection, async_client, check_cluster_prefix, describe, sync_client
from .errors import (
    ConnectionFailed,
    FlowJobsError,
    InvalidArgument,
    InvalidJobOptions,
    QueueHasActiveJobs,
    QueueNotPaused,
    error_for_code,
)
from .finishing import (
    FetchSettings,
    completed_value,
    failure_call,
    finish_call,
    keep_jobs,
    note_outcome,
    plan_failure,
)
from .job import Job
from .keys import (
    JOB_KEY_TYPES,
    QueueKeys,
    events_max_length,
    naming_foreign_values,
    raise_foreign_value,
)
from .options import (
    MAX_PRIORITY,
    EncodedJob,
    JobDefaults,
    encode_job,
    now_ms,
    whole_argument,
)
from .outbox import AlreadyPushed, PushReceipt, PushTooLate

# Job states as BullMQ names them, and the Redis structure holding each.
STATES: dict[str, tuple[str, str]] = {
    "waiting": ("wait", "list"),
    "active": ("active", "list"),
    "prioritized": ("prioritized", "zset"),
    "delayed": ("delayed", "zset"),
    "completed": ("completed", "zset"),
    "failed": ("failed", "zset"),
    "waiting-children": ("waiting-children", "zset"),
}
STATE_ALIASES = {"wait": "waiting", "paused": "waiting"}
MAX_MANUAL_RATE_LIMIT = 9007199254740991
PRIORITY_BAND = 2**32
GET_JOBS_MAX_BACKFILL_ROUNDS = 5  # Node 6's GET_JOBS_MAX_BACKFILL_ITERATIONS


def _states(states: Any) -> list[str]:
    """One state name or an iterable of them, as a list (InvalidArgument otherwise)."""
    if isinstance(states, str):
        return [states]
    try:
        listed = list(states)
    except TypeError:
        listed = None
    if listed is None or not all(isinstance(state, str) for state in listed):
        raise InvalidArgument(
            f"states must be a state name or a list of them ({', '.join(STATES)}), got {states!r}"
        )
    return listed


def _state_name(state: str) -> str:
    if not isinstance(state, str):
        raise InvalidArgument(f"a job state must be a name ({', '.join(STATES)}), got {state!r}")
    name = STATE_ALIASES.get(state, state)
    if name not in STATES:
        raise FlowJobsError(f'unknown job state "{state}"; known: {", ".join(STATES)}')
    return name


class Queue:
    """A BullMQ queue on Redis (`<prefix>:<name>:*`)."""

    def __init__(
        self,
        name: str,
        connection: Connection = None,
        prefix: str = "bull",
        default_job_options: dict[str, Any] | None = None,
    ) -> None:
        self.keys = QueueKeys(prefix, name)
        self.name = name
        self.prefix = prefix
        self.connection = connection
        self.client: redis.Redis = sync_client(connection)
        check_cluster_prefix(self.client, prefix)
        self.default_job_options = dict(default_job_options or {})
        # checked now, not at the first add (nor at every add)
        self._job_defaults = JobDefaults.check(
            self.keys.qualified, prefix, self.default_job_options
        )
        self._aclient: redis.asyncio.Redis | None = None

    def job_defaults(self) -> JobDefaults:
        """`default_job_options`, checked (again only if they were changed since)."""
        self._job_defaults = self._job_defaults.current(
            self.keys.qualified, self.prefix, self.default_job_options
        )
        return self._job_defaults

    def aclient(self) -> redis.asyncio.Redis:
        """The asyncio client of the worker running this queue's jobs."""
        if self._aclient is None:
            raise FlowJobsError(
                "async job methods (a*) are only available inside a worker's async processor"
            )
        return self._aclient

    def on_event_loop(self) -> Queue:
        """A copy of this queue whose async job methods use a new asyncio client of the
        running event loop (asyncio clients are bound to one loop); close it with
        ``await copy.aclient().aclose()``. For async processors run outside the
        worker's loop (the test kit)."""
        bound = copy.copy(self)
        bound._aclient = async_client(self.connection)
        return bound

    def __repr__(self) -> str:
        return f"<Queue {self.keys.qualified}>"

    # --- adding ----------------------------------------------------------------------------
    def encode(self, name: str, data: Any = None, **options: Any) -> EncodedJob:
        """Validates a job for this queue without writing anything."""
        return encode_job(
            self.keys.qualified, self.prefix, name, data, options, self.job_defaults()
        )

    def add(self, name: str, data: Any = None, **options: Any) -> Job:
        """Adds one job; with an existing `job_id` returns that job unchanged."""
        return self.add_with(name, data, options)

    def add_with(
        self,
        name: str,
        data: Any,
        options: dict[str, Any],
        meanwhile: Callable[[EncodedJob], None] | None = None,
    ) -> Job:
        """`add` with the options as a dict; `meanwhile(encoded_job)`, when given, runs
        while Redis writes the job (see `add_encoded`)."""
        with telemetry.add_span(self.name, name) as metadata:
            if metadata is not None and options.get("telemetry") is None:
                options = {**options, "telemetry": metadata}
            encoded = self.encode(name, data, **options)
            after_send = None if meanwhile is None else lambda: meanwhile(encoded)
            return self.add_encoded([encoded], meanwhile=after_send)[0]

    def add_bulk(self, jobs: Iterable[dict[str, Any] | tuple]) -> list[Job]:
        """Adds many jobs atomically: every job is validated first, then all are
        written in one script call (all or none)."""
        encoded = self.encode_bulk(jobs)
        return self.add_encoded(encoded) if encoded else []

    def encode_bulk(self, jobs: Iterable[dict[str, Any] | tuple]) -> list[EncodedJob]:
        """Validates `[{"name", "data", "opts"}, ...]` (or `(name, data, opts)` tuples)
        without writing anything."""
        encoded = []
        for index, item in enumerate(jobs):
            if isinstance(item, tuple):
                name, data, options = (*item, None, None)[:3]
                options = options or {}
            elif isinstance(item, dict):
                unknown = set(item) - {"name", "data", "opts"}
                if unknown:
                    raise InvalidJobOptions(
                        f"add_bulk item {index}: unknown keys {sorted(unknown)} (name, data, opts)"
                    )
                name, data, options = item.get("name"), item.get("data"), item.get("opts") or {}
            else:
                raise InvalidJobOptions(f"add_bulk item {index} must be a dict, got {item!r}")
            encoded.append(self.encode(name, data, **options))
        return encoded

    def add_encoded(
        self,
        jobs: Sequence[EncodedJob],
        receipt: PushReceipt | None = None,
        meanwhile: Callable[[], None] | None = None,
    ) -> list[Job]:
        """Writes jobs checked by `encode`; with `receipt`, as the push of an outbox entry.
        The `Job`s returned are built while Redis writes them (their ids, which Redis
        gives, set after), and so is `meanwhile()` run: work that would otherwise wait
        for the answer. It must not fail on input (the jobs may be written already)."""
        added: list[Job] = []

        def build() -> None:
            for job in jobs:
                added.append(self._added_job(job))
            if meanwhile is not None:
                meanwhile()

        ids = run_add(self.client, self.keys.meta, jobs, receipt, self.connection, "add", build)
        for instance, job_id in zip(added, ids, strict=True):
            instance.id = job_id
        return added

    def _added_job(self, job: EncodedJob) -> Job:
        """The `Job` of an encoded job, as written (its id, until Redis answers, the one
        asked for, or "")."""
        fields = {
            "name": job.name,
            "data": job.data_json,
            "timestamp": str(job.timestamp),
            "delay": str(job.delay),
            "priority": str(job.priority),
        }
        instance = Job(
            self if job.queue_key == self.keys.qualified else _queue_for(self, job.queue_key),
            job.job_id or "",
            fields,
        )
        instance.opts = job.opts
        instance.parent_key = job.parent_key
        instance.parent = job.parent
        return instance

    def _keys_to_name(self) -> tuple[redis.Redis, list[str], None]:
        """Where `naming_foreign_values` looks for another client's value: this queue."""
        return self.client, [self.keys.qualified], None

    # --- reading ---------------------------------------------------------------------------
    @naming_foreign_values
    def get_job(self, job_id: str) -> Job | None:
        fields = self.client.hgetall(self.keys.job(str(job_id)))
        return Job(self, str(job_id), fields) if fields else None

    @naming_foreign_values
    def get_jobs_by_id(self, ids: Sequence[str]) -> list[Job]:
        pipe = self.client.pipeline(transaction=False)
        for job_id in ids:
            pipe.hgetall(self.keys.job(job_id))
        return [
            Job(self, job_id, fields)
            for job_id, fields in zip(ids, pipe.execute(), strict=True)
            if fields
        ]

    @naming_foreign_values
    def get_job_ids(
        self,
        states: Iterable[str] | str,
        start: int = 0,
        end: int = -1,
        asc: bool = False,
    ) -> list[str]:
        start = whole_argument("start", start, -(2**63))
        end = whole_argument("end", end, -(2**63))
        pages = (self._state_range(state, start, end, asc) for state in _states(states))
        return list(dict.fromkeys(job_id for page in pages for job_id in page))

    def _state_range(self, state: str, start: int, end: int, asc: bool) -> list[str]:
        suffix, kind = STATES[_state_name(state)]
        key = self.keys.key(suffix)
        if kind == "list":
            if asc:
                return self.client.lrange(key, -(end + 1) if end >= 0 else 0, -(start + 1))[::-1]
            return self.client.lrange(key, start, end)
        if asc:
            return self.client.zrange(key, start, end)
        return self.client.zrevrange(key, start, end)

    @naming_foreign_values
    def get_jobs(
        self,
        states: Iterable[str] | str = (
            "waiting",
            "active",
            "delayed",
            "completed",
            "failed",
            "prioritized",
            "waiting-children",
        ),
        start: int = 0,
        end: int = -1,
        asc: bool = False,
    ) -> list[Job]:
        """Jobs in `states`, a page of each. As in Node 6, ids whose hash is gone are
        skipped and a bounded page is filled from further along the state's range."""
        start = whole_argument("start", start, -(2**63))
        end = whole_argument("end", end, -(2**63))
        pages = (self._state_jobs(state, start, end, asc) for state in _states(states))
        unique: dict[str, Job] = {}
        for page in pages:
            for job in page:
                unique.setdefault(job.id, job)  # a job in two states is listed once
        return list(unique.values())

    def _state_jobs(self, state: str, start: int, end: int, asc: bool) -> list[Job]:
        if start < 0 or end < 0:
            return self.get_jobs_by_id(self._state_range(state, start, end, asc))
        wanted = end - start + 1
        jobs: list[Job] = []
        cursor = start
        for _ in range(GET_JOBS_MAX_BACKFILL_ROUNDS):
            ids = self._state_range(state, cursor, cursor + wanted - 1, asc)
            if not ids:
                break
            jobs += self.get_jobs_by_id(ids)[: wanted - len(jobs)]
            if len(jobs) >= wanted:
                break
            cursor += len(ids)
        return jobs

    @naming_foreign_values
    def get_job_counts(self, *states: str) -> dict[str, int]:
        names = [_state_name(s) for s in states] if states else list(STATES)
        pipe = self.client.pipeline(transaction=False)
        for name in names:
            suffix, kind = STATES[name]
            (pipe.llen if kind == "list" else pipe.zcard)(self.keys.key(suffix))
        counts = dict(zip(names, pipe.execute(), strict=True))
        if not states or "waiting" in names:
            counts["waiting"] = counts.get("waiting", 0) + self.client.llen(self.keys.key("paused"))
        return {state: counts[_state_name(state)] for state in states} if states else counts

    @naming_foreign_values
    def get_counts_per_priority(self, priorities: Iterable[int]) -> dict[int, int]:
        """Jobs waiting per priority, as Node's getCountsPerPriority: priority 0 counts the
        wait list, any other its band of the prioritized set."""
        unique = list(dict.fromkeys(priorities))
        for priority in unique:
            if isinstance(priority, bool) or not isinstance(priority, int):
                raise InvalidJobOptions(f"priorities must be integers, got {priority!r}")
            if not 0 <= priority <= MAX_PRIORITY:
                raise InvalidJobOptions(f"priority must be 0..{MAX_PRIORITY:_}, got {priority!r}")
        pipe = self.client.pipeline(transaction=False)
        for priority in unique:
            if priority == 0:
                pipe.llen(self.keys.key("wait"))
            else:
                # a prioritized job's score is priority * 2^32 + its arrival counter
                band = priority * PRIORITY_BAND
                pipe.zcount(self.keys.key("prioritized"), band, band + PRIORITY_BAND - 1)
        return dict(zip(unique, pipe.execute(), strict=True))

    def count(self) -> int:
        """Jobs waiting to run (waiting + prioritized + delayed)."""
        counts = self.get_job_counts("waiting", "prioritized", "delayed")
        return sum(counts.values())

    @naming_foreign_values
    def get_job_state(self, job_id: str) -> str:
        job_id = str(job_id)
        pipe = self.client.pipeline(transaction=False)
        order = [
            "completed",
            "failed",
            "delayed",
            "prioritized",
            "active",
            "waiting",
            "paused",
            "waiting-children",
        ]
        for state in order:
            suffix = "paused" if state == "paused" else STATES[state][0]
            if state in ("active", "waiting", "paused"):
                pipe.lpos(self.keys.key(suffix), job_id)
            else:
                pipe.zscore(self.keys.key(suffix), job_id)
        for state, found in zip(order, pipe.execute(), strict=True):
            if found is not None:
                return "waiting" if state == "paused" else state
        group_id = self.client.hget(self.keys.job(job_id), "gid")
        group_wait = self.keys.key(f"group:{group_id}:wait")
        if group_id and self.client.lpos(group_wait, job_id) is not None:
            return "waiting"
        return "unknown"

    def get_job_logs(
        self, job_id: str, start: int = 0, end: int = -1, asc: bool = True
    ) -> tuple[list[str], int]:
        key = f"{self.keys.job(str(job_id))}:logs"
        pipe = self.client.pipeline(transaction=False)
        if asc:
            pipe.lrange(key, start, end)
        else:
            pipe.lrange(key, -(end + 1) if end >= 0 else 0, -(start + 1))
        pipe.llen(key)
        try:
            logs, total = pipe.execute()
        except redis.ResponseError as error:  # the job's own key: not among the queue's
            raise_foreign_value(
                self.client, [], error, "get_job_logs: ", also={key: JOB_KEY_TYPES["logs"]}
            )
            raise
        return (logs if asc else logs[::-1]), total

    @naming_foreign_values
    def get_meta(self) -> dict[str, str]:
        return self.client.hgetall(self.keys.meta)

    # --- managing --------------------------------------------------------------------------
    @naming_foreign_values
    def pause(self) -> None:
        self._pause("paused")

    @naming_foreign_values
    def resume(self) -> None:
        self._pause("resumed")

    def _pause(self, action: str) -> None:
        scripts.run(self.client, "pause", [self.keys.meta], [self.keys.qualified, action])

    @naming_foreign_values
    def is_paused(self) -> bool:
        return bool(self.client.hexists(self.keys.meta, "paused"))

    @naming_foreign_values
    def drain(self, delayed: bool = False) -> int:
        """Removes every job waiting to run (and delayed ones if asked); returns how many."""
        return scripts.run(
            self.client,
            "drain",
            [self.keys.meta],
            [self.keys.qualified, "1" if delayed else "0", now_ms()],
        )

    @naming_foreign_values
    def clean(self, grace_ms: int, limit: int = 0, state: str = "completed") -> list[str]:
        """Removes jobs of `state` finished (or created) more than grace_ms ago."""
        grace_ms = whole_argument("clean: grace_ms", grace_ms, 0)
        limit = whole_argument("clean: limit", limit, 0)
        name = _state_name(state)
        suffix = STATES[name][0]
        removed: list[str] = []
        while True:
            batch_limit = min(limit - len(removed), 10_000) if limit else 10_000
            batch = scripts.run(
                self.client,
                "clean_jobs",
                [self.keys.key(suffix)],
                [
                    self.keys.qualified,
                    now_ms() - int(grace_ms),
                    batch_limit,
                    suffix,
                    now_ms(),
                ],
            )
            removed.extend(batch)
            if len(batch) < batch_limit or (limit and len(removed) >= limit):
                return removed

    @naming_foreign_values
    def obliterate(self, force: bool = False, count: int = 1000) -> None:
        """Deletes the queue and all its jobs (pauses it first)."""
        count = whole_argument("obliterate: count", count, 1)
        self._pause("paused")
        while True:
            result = scripts.run(
                self.client,
                "obliterate",
                [self.keys.meta],
                [self.keys.qualified, count, "1" if force else "0"],
            )
            if result == -1:
                raise QueueNotPaused(f'obliterate: queue "{self.name}" is not paused')
            if result == -2:
                raise QueueHasActiveJobs(
                    f'obliterate: queue "{self.name}" has active jobs; use force=True'
                )
            if result == 0:
                break
        # keys no state structure points at (deduplication, scheduler hashes, strays)
        for key in self.client.scan_iter(match=f"{self.keys.qualified}:*", count=1000):
            self.client.delete(key)

    @naming_foreign_values
    def retry_jobs(
        self, state: str = "failed", count: int = 1000, timestamp: int | None = None
    ) -> None:
        """Moves failed (or completed) jobs back to wait."""
        name = _state_name(state)
        if name not in ("failed", "completed"):
            raise FlowJobsError(f'retry_jobs: state must be "failed" or "completed", got {state!r}')
        count = whole_argument("retry_jobs: count", count, 1)
        before = now_ms() if timestamp is None else whole_argument("timestamp", timestamp, 0)
        self._move_jobs_to_wait(name, count, before)

    @naming_foreign_values
    def promote_jobs(self, count: int = 1000) -> None:
        """Moves every delayed job to wait now."""
        count = whole_argument("promote_jobs: count", count, 1)
        self._move_jobs_to_wait("delayed", count, "+inf")

    def _move_jobs_to_wait(self, state: str, count: int, max_score: Any) -> None:
        while (
            scripts.run(
                self.client,
                "move_jobs_to_wait",
                [self.keys.key(state)],
                [self.keys.qualified, count, max_score, state],
            )
            == 1
        ):
            pass

    def rate_limit(self, ms: int) -> None:
        """Stops every worker of this queue from taking jobs for `ms` (needs a limiter)."""
        ms = whole_argument("rate_limit: ms", ms, 1)
        self.client.set(self.keys.key("limiter"), MAX_MANUAL_RATE_LIMIT, px=ms)

    @naming_foreign_values
    def get_rate_limit_ttl(self, max_jobs: int | None = None) -> int:
        """As Node: with a maximum (`max_jobs`, else the global rate limit's) the ms left
        while the limiter is full, else 0; with none, the limiter key's PTTL (-2 once the
        key is gone, -1 if it has no expiry)."""
        limiter = self.keys.key("limiter")
        if not max_jobs:
            meta_max = self.client.hget(self.keys.meta, "max")
            max_jobs = int(meta_max) if meta_max else None
        if max_jobs is None:
            return self.client.pttl(limiter)
        current = self.client.get(limiter)
        if current is None or int(current) < max_jobs:
            return 0
        ttl = self.client.pttl(limiter)
        return ttl if ttl > 0 else 0

    def remove_rate_limit_key(self) -> int:
        """Deletes the limiter key; returns how many keys were deleted (0 or 1)."""
        return self.client.delete(self.keys.key("limiter"))

    def set_global_concurrency(self, concurrency: int) -> None:
        if not isinstance(concurrency, int) or concurrency < 1:
            raise FlowJobsError(
                f"global concurrency must be a positive integer, got {concurrency!r}"
            )
        self.client.hset(self.keys.meta, "concurrency", concurrency)

    def get_global_concurrency(self) -> int | None:
        value = self.client.hget(self.keys.meta, "concurrency")
        return int(value) if value else None

    def remove_global_concurrency(self) -> int:
        """Returns how many fields were removed (0 or 1), as Node."""
        return self.client.hdel(self.keys.meta, "concurrency")

    def set_global_rate_limit(self, max_jobs: int, duration_ms: int) -> None:
        max_jobs = whole_argument("global rate limit: max_jobs", max_jobs, 1)
        duration_ms = whole_argument("global rate limit: duration_ms", duration_ms, 1)
        self.client.hset(self.keys.meta, mapping={"max": max_jobs, "duration": duration_ms})

    def get_global_rate_limit(self) -> dict[str, int] | None:
        """`{"max", "duration"}` set by `set_global_rate_limit`, or None."""
        max_jobs, duration = self.client.hmget(self.keys.meta, ["max", "duration"])
        if max_jobs and duration:
            return {"max": int(max_jobs), "duration": int(duration)}
        return None

    def remove_global_rate_limit(self) -> int:
        """Returns how many fields were removed (0 to 2), as Node."""
        return self.client.hdel(self.keys.meta, "max", "duration")

    def trim_events(self, max_length: int) -> int:
        max_length = whole_argument("trim_events: max_length", max_length, 0)
        return self.client.xtrim(self.keys.events, maxlen=max_length, approximate=True)

    def set_events_max_length(self, max_length: int) -> None:
        """How many entries the events stream keeps, about (meta ``opts.maxLenEvents``):
        every script that emits an event trims the stream to it, whichever client runs
        it. Node's ``Queue`` writes it when it is created, from ``streams.events.maxLen``
        (default 10,000); the last writer wins."""
        max_length = whole_argument("set_events_max_length: max_length", max_length, 1)
        self.client.hset(self.keys.meta, "opts.maxLenEvents", max_length)

    def get_events_max_length(self) -> int:
        """The events stream's cap (see ``set_events_max_length``); the scripts' default,
        10,000, when no client has set it yet."""
        return events_max_length(self.client.hget(self.keys.meta, "opts.maxLenEvents"))

    def check_stalled(
        self, max_stalled_count: int = 1, stalled_interval_ms: int = 30_000
    ) -> list[str]:
        """One run of the stalled-job check (skipped, returning [], if another process ran
        it less than `stalled_interval_ms` ago). Returns the ids moved back to wait."""
        max_stalled_count = whole_argument("max_stalled_count", max_stalled_count, 0)
        stalled_interval_ms = whole_argument("stalled_interval_ms", stalled_interval_ms, 1)
        return scripts.run(
            self.client,
            "move_stalled_jobs_to_wait",
            [self.keys.key("stalled-check")],
            [self.keys.qualified, max_stalled_count, now_ms(), stalled_interval_ms],
        )

    # --- deduplication ---------------------------------------------------------------------
    def get_deduplication_job_id(self, dedup_id: str) -> str | None:
        """The id of the job that currently owns deduplication id `dedup_id`."""
        return self.client.get(self.keys.key(f"de:{dedup_id}"))

    def remove_deduplication_key(self, dedup_id: str, job_id: str | None = None) -> bool:
        """Releases a deduplication id so the next add with it creates a job. With
        `job_id`, only if that job still owns it."""
        key = self.keys.key(f"de:{dedup_id}")
        if job_id is None:
            return bool(self.client.delete(key))
        return bool(scripts.run(self.client, "remove_deduplication_key", [key], [str(job_id)]))

    # --- job schedulers (see schedulers.py) ---------------------------------------------------
    def upsert_job_scheduler(
        self,
        scheduler_id: str,
        every: int | None = None,
        pattern: str | None = None,
        **options: Any,
    ) -> Job | None:
        """Creates or replaces a job scheduler: `every` ms or a cron `pattern`, with
        `tz`, `limit`, `count` (iterations already made), `start_date`, `end_date`,
        `immediately`, `offset` and `template={"name", "data", "opts"}`. Returns its
        pending iteration, or None when no run is left (`count` reached `limit`, or the
        next run would be after `end_date`). An end date already past raises
        SchedulerError, as Node's Queue does."""
        schedulers.refuse_past_end_date(self, scheduler_id, options.get("end_date"))
        return schedulers.upsert_job_scheduler(self, scheduler_id, every, pattern, **options)

    def remove_job_scheduler(self, scheduler_id: str) -> bool:
        return schedulers.remove_job_scheduler(self, scheduler_id)

    def pause_job_scheduler(self, scheduler_id: str) -> bool:
        """No more runs until `resume_job_scheduler` (or any upsert of it)."""
        return schedulers.pause_job_scheduler(self, scheduler_id)

    def resume_job_scheduler(self, scheduler_id: str) -> Job | None:
        return schedulers.resume_job_scheduler(self, scheduler_id)

    def run_job_scheduler_now(self, scheduler_id: str) -> Job:
        """One extra run now from the scheduler's template; its schedule is unchanged."""
        return schedulers.run_job_scheduler_now(self, scheduler_id)

    def get_job_scheduler(self, scheduler_id: str) -> schedulers.JobScheduler | None:
        return schedulers.get_job_scheduler(self, scheduler_id)

    def get_job_schedulers(
        self, start: int = 0, end: int = -1, asc: bool = False
    ) -> list[schedulers.JobScheduler]:
        return schedulers.get_job_schedulers(self, start, end, asc)

    def get_job_schedulers_count(self) -> int:
        return schedulers.get_job_schedulers_count(self)

    # --- metrics ---------------------------------------------------------------------------
    def get_metrics(self, kind: str, start: int = 0, end: int = -1) -> dict[str, Any]:
        """Jobs `"completed"` or `"failed"` per minute, recorded by workers running with
        `metrics_max_data_points`: `{"meta": {"count", "prev_ts", "prev_count"}, "data":
        [newest minute first, ...], "count": number of data points}`."""
        if kind not in ("completed", "failed"):
            raise FlowJobsError(f'get_metrics: kind must be "completed" or "failed", got {kind!r}')
        start = whole_argument("start", start, -(2**63))
        end = whole_argument("end", end, -(2**63))
        key = self.keys.key(f"metrics:{kind}")
        pipe = self.client.pipeline(transaction=False)
        pipe.hmget(key, "count", "prevTS", "prevCount")
        pipe.lrange(f"{key}:data", start, end)
        pipe.llen(f"{key}:data")
        (count, prev_ts, prev_count), data, length = pipe.execute()
        return {
            "meta": {
                "count": int(count or 0),
                "prev_ts": int(prev_ts or 0),
                "prev_count": int(prev_count or 0),
            },
            "data": [int(point) for point in data],
            "count": length,
        }

    # --- job groups (see groups.py) -----------------------------------------------------------
    def set_group_concurrency(self, concurrency: int) -> None:
        """At most `concurrency` jobs of each group run at once, across all workers."""
        groups.set_group_limits(self, concurrency=concurrency)

    def remove_group_concurrency(self) -> None:
        self.client.hdel(self.keys.meta, "groupConcurrency")

    def set_group_rate_limit(self, max_jobs: int, duration_ms: int) -> None:
        """At most `max_jobs` jobs of each group start per `duration_ms` window."""
        groups.set_group_limits(self, max_jobs=max_jobs, duration_ms=duration_ms)

    def remove_group_rate_limit(self) -> None:
        self.client.hdel(self.keys.meta, "groupMax", "groupDuration")

    def get_group_settings(self) -> dict[str, int | None]:
        """`{"concurrency", "max", "duration"}` of the queue's group limits (None = unset)."""
        return groups.group_settings(self)

    def get_groups(self) -> list[groups.GroupInfo]:
        """Groups with jobs waiting or held back, in the order of their turns."""
        return groups.get_groups(self)

    def get_group(self, group_id: str) -> groups.GroupInfo:
        return groups.get_group(self, group_id)

    # --- cancelling a running job (see cancellation.py) -----------------------------------
    def cancel_job(self, job_id: str, reason: str = "") -> bool:
        """Asks the worker running `job_id` to stop it; the job then fails with
        `cancelled: <reason>`. False when the job is not running."""
        return cancellation.cancel_job(self, job_id, reason)

    def cancel_and_confirm(self, job_id: str, reason: str = "", timeout: float = 2.0) -> str:
        """`cancel_job`, then waits up to `timeout` s for the worker's answer: "killed"
        (its child process), "interrupted" (async), "signalled" (a thread: it stops only
        if the processor checks the signal), "not started" (no child process had it yet),
        or "not running" / "no answer"."""
        return cancellation.cancel_and_confirm(self, job_id, reason, timeout)

    def get_workers(self) -> list[dict[str, str]]:
        """Connected workers of this queue (by connection name, as BullMQ lists them)."""
        import base64

        node_name = f"{self.prefix}:{base64.b64encode(self.name.encode()).decode()}"
        names = {node_name, self.keys.qualified}
        workers = []
        for client in self.client.client_list():
            name = client.get("name", "")
            if name in names or any(name.startswith(f"{n}:w:") for n in names):
                workers.append(client)
        return workers

    def close(self) -> None:
        if self.connection is None or isinstance(self.connection, str):
            self.client.close()

    # --- manual processing ------------------------------------------------------------------
    def _finish(
        self,
        job: Job,
        target: str,
        value: Any,
        token: str,
        fetch_next: bool,
        keep_option: Any,
    ) -> Job | None:
        fetch_tokens = [new_token()] if fetch_next else None
        outcome = target
        if target == "completed":
            keep = keep_jobs(keep_option, job.opts.get("removeOnComplete"))
            call = finish_call(
                job,
                "completed",
                completed_value(value, job),
                token,
                keep,
                fetch_tokens,
                FetchSettings(),
            )
        else:
            keep = keep_jobs(keep_option, job.opts.get("removeOnFail"))
            plan = plan_failure(job, value)
            call = failure_call(job, value, token, plan, keep, fetch_tokens, FetchSettings())
            if plan.kind != "fail":
                outcome = "retried"
        result = scripts.run(self.client, *call)
        if isinstance(result, int) and result < 0:
            raise error_for_code(result, job.id, self.name, f"move to {target}")
        note_outcome(job, call, outcome, value)
        if isinstance(result, list) and result[0]:
            job_id, flat = result[0][0]
            next_job = Job.from_flat(self, job_id, flat)
            next_job.token = fetch_tokens[0] if fetch_tokens else None
            return next_job
        return None


def run_add(
    client: redis.Redis,
    meta_key: str,
    jobs: Sequence[EncodedJob],
    receipt: PushReceipt | None,
    connection: Connection,
    operation: str,
    meanwhile: Callable[[], None] | None = None,
) -> list[str]:
    """Runs the add script for encoded jobs (of any queues) and returns their ids;
    `meanwhile` as in `scripts.run`."""
    args: list[Any] = [len(jobs)]
    for job in jobs:
        args.extend(job.script_args())
    keys = [meta_key]
    if receipt is not None:
        keys += receipt.keys()
        args += receipt.args()
    try:
        result = scripts.run(client, "add_jobs", keys, args, meanwhile)
    except (redis.ConnectionError, redis.TimeoutError) as error:
        raise connection_failed(operation, jobs, connection, error) from error
    except redis.ResponseError as error:
        queues = dict.fromkeys(job.queue_key for job in jobs)
        outcome = f"; {_what(jobs)} not added"
        raise_foreign_value(client, queues, error, f"{operation}: ", outcome)
        raise
    if result[0] == 1 and receipt is not None:
        raise AlreadyPushed(f"{operation}: outbox entry {receipt.key} was already pushed")
    if result[0] == 2 and receipt is not None:
        raise PushTooLate(f"{operation}: deadline of outbox entry {receipt.key} has passed")
    if result[0] != 0:
        failed = jobs[result[1] - 1]
        raise error_for_code(result[0], failed.job_id or "(new)", failed.queue_key, operation)
    return result[1:]


def _what(jobs: Sequence[EncodedJob]) -> str:
    first = jobs[0]
    what = f'job "{first.name}" for queue "{first.queue_key}"'
    if len(jobs) > 1:
        what = f"{len(jobs)} jobs ({what}, ...)"
    return what


def connection_failed(
    operation: str, jobs: Sequence[EncodedJob], connection: Connection, error: BaseException
) -> ConnectionFailed:
    what = _what(jobs)
    if isinstance(error, redis.AuthenticationError):
        return ConnectionFailed(
            f"{operation}: Redis at {describe(connection)} refused the credentials ({error}); "
            f"{what} not added: check the user name and password in the connection URL"
        )
    return ConnectionFailed(
        f"{operation}: Redis at {describe(connection)} did not answer ({error}); "
        f"{what} not confirmed: retry with the same job_id to stay idempotent"
    )


def new_token() -> str:
    return f"{uuid.uuid4()}:1"


def _queue_for(base: Queue, qualified: str) -> Queue:
    prefix, _, name = qualified.rpartition(":")
    return Queue(name, base.client, prefix)
