"""Worker: takes jobs from a queue, runs the processor, and records the outcome.

The worker runs an asyncio loop (in a background thread with autorun=True, or
in the caller's thread with `run()`). Round trips are what limit a Python
worker, so it batches them while keeping BullMQ's per-job semantics:
- one move_to_active call takes as many jobs as there are free slots, each
  locked with its own token;
- finished jobs are recorded together in one pipeline (one script call per job,
  each atomic), followed by a fetch for the slots they freed;
- the locks of all active jobs are renewed in one script call.
Up to concurrency 8 (DIRECT_LANES_UP_TO) with a synchronous processor, each slot is a
thread that runs a job, records it and takes its next in the same script call, as
Node's worker does on its one thread (see `_run_direct_lane`); while its jobs are short
it takes one ahead, which runs while the record before it is under way (`fetch_ahead`).
The loop renews the locks, listens for cancel requests and gives back a job taken ahead
of one that runs long.
An idle worker blocks on the queue's marker (BZPOPMIN), it does not poll.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import inspect
import itertools
import logging
import os
import sys
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any

import redis
import redis.asyncio

from . import cancellation, groups, joblog, loopwatch, schedulers, scripts, telemetry
from .backoff import BackoffStrategy
from .connection import (
    SOCKET_TIMEOUT_S,
    Connection,
    OutageLog,
    async_client,
    describe,
    eviction_warning,
    is_cluster,
    printable,
)
from .errors import (
    DelayedError,
    FlowJobsError,
    InvalidJobData,
    InvalidWorkerOptions,
    JobCancelled,
    RateLimitError,
    UnrecoverableError,
    WaitingChildrenError,
    WaitingError,
    error_for_code,
)
from .finishing import (
    FailurePlan,
    FetchSettings,
    completed_value,
    error_message,
    failure_call,
    finish_call,
    keep_jobs,
    note_outcome,
    plan_failure,
)
from .isolation import ProcessorTimedOut, ProcessPool, processor_path, resolve_processor
from .job import Job
from .keys import foreign_value_error, is_foreign_refusal
from .options import now_ms
from .queue import Queue
from .threadpool import ThreadPool, carried
from .worker_settings import check_worker_settings

logger = logging.getLogger("flowjobs.worker")

Processor = Callable[..., Any]
MOVED_BY_PROCESSOR = (DelayedError, WaitingChildrenError, WaitingError)
MAXIMUM_RATE_LIMIT_DELAY_MS = 30_000
# the longest pause between two reconnection attempts (ioredis, under BullMQ, waits 2 s)
CONNECTION_RETRY_MAX_S = 2.0
# A job whose outcome Redis refused because a queue key held another client's value is
# kept active and its outcome sent again after this long, doubling up to the maximum; a
# scheduler's next run that could not be made is tried again on the same terms.
REFUSED_RECORD_RETRY_S = 1.0
REFUSED_RECORD_RETRY_MAX_S = 30.0
# how often a worker checks that its cancel-request subscription still delivers
PUBSUB_PROBE_INTERVAL_S = 5.0


class Worker:
    """Processes the jobs of one queue with up to `concurrency` at a time."""

    def __init__(
        self,
        queue_name: str,
        processor: Processor | str | None = None,
        connection: Connection = None,
        prefix: str = "bull",
        concurrency: int = 1,
        lock_duration: int = 30_000,
        lock_renew_time: int | None = None,
        stalled_interval: int = 30_000,
        max_stalled_count: int = 1,
        autorun: bool = True,
        name: str | None = None,
        limiter: dict[str, int] | None = None,
        backoff_strategies: dict[str, BackoffStrategy] | None = None,
        drain_delay: float = 5.0,
        remove_on_complete: Any = None,
        remove_on_fail: Any = None,
        metrics_max_data_points: int | None = None,
        skip_stalled_check: bool = False,
        skip_lock_renewal: bool = False,
        group_concurrency: int | None = None,
        group_limiter: dict[str, int] | None = None,
        isolation: str = "thread",
        job_timeout_ms: int | None = None,
        process_initializer: str | None = None,
        fetch_ahead: bool = True,
    ) -> None:
        if isolation not in ("thread", "process"):
            raise InvalidWorkerOptions(
                f'isolation must be "thread" or "process", got {isolation!r}'
            )
        processor, self.processor_path = resolve_processor(processor)
        if isolation == "process" and processor is not None and self.processor_path is None:
            processor_path(processor)  # raises: explains what a child process can import
        settings = check_worker_settings(
            concurrency=concurrency,
            lock_duration=lock_duration,
            lock_renew_time=lock_renew_time,
            stalled_interval=stalled_interval,
            max_stalled_count=max_stalled_count,
            drain_delay=drain_delay,
            limiter=limiter,
            group_concurrency=group_concurrency,
            group_limiter=group_limiter,
            job_timeout_ms=job_timeout_ms,
            metrics_max_data_points=metrics_max_data_points,
            remove_on_complete=remove_on_complete,
            remove_on_fail=remove_on_fail,
            name=name,
        )
        limiter, group_limiter = settings["limiter"], settings["group_limiter"]
        self.queue = Queue(queue_name, connection, prefix)
        self.name = name
        self.processor = processor
        self.concurrency = concurrency = settings["concurrency"]
        self.lock_duration = settings["lock_duration"]
        self.lock_renew_time = settings["lock_renew_time"]
        self.stalled_interval = settings["stalled_interval"]
        self.max_stalled_count = settings["max_stalled_count"]
        self.drain_delay = settings["drain_delay"]
        self.backoff_strategies = dict(backoff_strategies or {})
        self.remove_on_complete = remove_on_complete
        self.remove_on_fail = remove_on_fail
        self.metrics_max_data_points = settings["metrics_max_data_points"]
        self.skip_stalled_check = skip_stalled_check
        self.skip_lock_renewal = skip_lock_renewal
        self.isolation = isolation
        self.job_timeout_ms = settings["job_timeout_ms"]
        self.group_limits = {
            "concurrency": settings["group_concurrency"],
            "max_jobs": (group_limiter or {}).get("max"),
            "duration_ms": (group_limiter or {}).get("duration"),
        }
        self.fetch = FetchSettings(
            self.lock_duration,
            limiter["max"] if limiter else None,
            limiter["duration"] if limiter else None,
            name,
        )
        self._connection = connection
        self._token_base = str(uuid.uuid4())
        self._token_numbers = itertools.count(1)  # next() is atomic: lanes take tokens too
        self._counting = threading.Lock()  # jobs_processed, _lane_fetches: lanes count too
        self._listeners: dict[str, list[Callable[..., Any]]] = {}
        self._pass_token = _wants_token(processor)
        self._pass_signal = _wants_signal(processor)
        self._is_async = processor is not None and inspect.iscoroutinefunction(processor)
        self._pool: ProcessPool | None = None
        if isolation == "process" and processor is not None:
            # the parent only waits on children (in threads); a child runs the processor
            self._is_async = False
            self._pool = ProcessPool(
                self.processor_path or "",
                concurrency,
                connection,
                prefix,
                queue_name,
                process_initializer,
            )
        self._executor: ThreadPoolExecutor | None = None
        self._threads: ThreadPool | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None  # start()'s; run() uses the caller's
        self._loop_thread: threading.Thread | None = None
        self._stopped = threading.Event()
        self._started = threading.Event()
        self._closing = False
        self._force = False
        self._paused = False
        self._active: dict[str, Job] = {}
        self._reserved = 0
        self._finished: list[tuple[Job, str, Any]] = []
        # jobs kept active after a refused record (see _hold): id -> the next retry delay
        self._held: dict[str, float] = {}
        self._marker_refused = False  # the wait on the marker key was refused (see there)
        self._recording = 0
        # a synchronous processor at a small concurrency: each slot is a thread that
        # runs, records and takes its jobs itself (see _run_direct_lane)
        self._direct = (
            concurrency <= DIRECT_LANES_UP_TO and not self._is_async and self._pool is None
        )
        self._lanes_running = 0  # changed on the loop only
        self.fetch_ahead = fetch_ahead
        # lock tokens of the jobs lanes took ahead and have not begun, and since when
        # (monotonic s); under _ahead_lock (lanes and the loop's give-back)
        self._taken_ahead: dict[str, float] = {}
        self._ahead_lock = threading.Lock()
        self._lane_fetches = 0  # lanes' finish-and-fetch calls in flight; under _counting
        self._maybe_recorded: set[str] = set()  # ids whose record the lane sent, unanswered
        # Lock tokens of fetches whose answer was lost (a broken connection): Redis may
        # have run them, and the jobs they took sit active under these tokens until
        # _give_back_unanswered finds them (set.update/-= from lane threads: one GIL step)
        self._unanswered_tokens: set[str] = set()
        # Those looked for once, and until when (monotonic s) they are looked for again at
        # each lock renewal: a request can reach Redis long after its answer was given up
        # (a congested or cut path delivers it late, its close behind it)
        self._looked_for: dict[str, float] = {}
        self._giving_back: asyncio.Task | None = None
        self._batch_size = max(1, concurrency // 2)
        self._records_scheduled = False  # a _send_records call is queued on the loop
        self._lanes: list[Any] = []
        self._free_lanes: list[Any] = []
        self._limit_until = 0.0
        self._processed_since_drained = False
        self._fatal: BaseException | None = None
        self._outage = OutageLog(logger, describe(connection))
        self.jobs_processed = 0
        if autorun and processor is not None:
            self.start()

    # --- public control ------------------------------------------------------------------
    def on(self, event: str, listener: Callable[..., Any]) -> Worker:
        """Local events: active(job), completed(job, result), failed(job, error),
        error(exception), stalled(job_id), drained(), closed(),
        locks_renewed({"count", "job_ids"}), lock_renewal_failed(job_ids).

        Listeners run on the worker's event-loop thread, except that up to concurrency
        4 with a synchronous processor a job's active/completed/failed run on the thread
        that runs the job (which records it too): keep them quick and thread-safe.

        A worker made with autorun=True already runs: jobs finished before a listener is
        attached are not told to it. Attach listeners that must see every job to a
        worker made with autorun=False, then start() it."""
        self._listeners.setdefault(event, []).append(listener)
        return self

    def start(self) -> None:
        """Runs the worker in a background thread."""
        if self._thread is not None:
            return
        self._thread = threading.Thread(
            target=self.run, name=f"flowjobs-worker-{self.queue.name}", daemon=True
        )
        self._thread.start()
        self._started.wait(10)

    def run(self) -> None:
        """Runs the worker in this thread until `close()`."""
        if self.processor is None:
            raise FlowJobsError("this worker has no processor: use get_next_job() to process jobs")
        try:
            with asyncio.Runner(loop_factory=_loop_factory()) as runner:
                runner.run(self._main())
        finally:
            self._stopped.set()
        if self._fatal is not None:
            raise self._fatal

    def close(self, force: bool = False, timeout: float | None = None) -> None:
        """Stops taking jobs; waits (up to `timeout` s) for active jobs to finish, unless
        `force`, which leaves them to the stalled-job check."""
        self._closing = True
        self._force = self._force or force
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._wake.set)
                loop.call_soon_threadsafe(self._cancel_blocking)
        if self._is_own_thread(threading.current_thread()):
            return  # the worker winds down once this thread is done
        if self._thread is not None:
            if force and timeout is None:
                # a forced close leaves active jobs behind: it must not wait for ever on a
                # loop that does not wind down
                timeout = FORCED_CLOSE_WAIT_S
            self._thread.join(timeout)
            if self._thread.is_alive() and not force:
                self.close(force=True, timeout=5)
            elif self._thread.is_alive():
                logger.warning(
                    "worker for %s: its thread did not stop within %.0fs of a forced close; "
                    "it is left to end on its own (a daemon thread)",
                    self.queue.keys.qualified,
                    timeout,
                )
        elif loop is not None:
            self._stopped.wait(timeout)

    def _is_own_thread(self, thread: threading.Thread) -> bool:
        """The loop's thread or one running a job: a close() from there (a listener, a
        processor) must not wait for the worker to wind down, which waits for it."""
        return thread is self._loop_thread or (
            self._threads is not None and self._threads.owns(thread)
        )

    def pause(self) -> None:
        """Stops this worker (only) from taking new jobs. Returns once the fetches it
        had begun have answered: a job one took runs, and none is taken after. Called
        from the worker's own threads (a listener, a processor), which such a fetch may
        be waiting on, it returns at once; it waits PAUSE_WAIT_S at most."""
        self._paused = True
        loop = self._loop
        if loop is None or loop.is_closed() or self._is_own_thread(threading.current_thread()):
            return
        # the loop counts a fetch (_reserved) in the step that decided on it: once it
        # has run this callback, every fetch it decided on before the pause is counted
        passed = threading.Event()
        try:
            loop.call_soon_threadsafe(passed.set)
        except RuntimeError:  # the loop closed meanwhile
            return
        deadline = time.monotonic() + PAUSE_WAIT_S
        if not passed.wait(PAUSE_WAIT_S):
            return
        # lanes count theirs before they check for a pause
        while (self._reserved or self._lane_fetches) and time.monotonic() < deadline:
            time.sleep(0.001)

    def is_paused(self) -> bool:
        """Whether this worker was paused with `pause()` (the queue's own pause is
        `queue.is_paused()`)."""
        return self._paused

    def resume(self) -> None:
        self._paused = False
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._wake.set)

    def cancel_job(self, job_id: str, reason: str = "") -> bool:
        """Cancels `job_id` if this worker runs it (see `Queue.cancel_job` for any worker):
        its processor's signal fires, an async processor is interrupted, a child process
        is killed; the job fails with `cancelled: <reason>`. True if the job was found."""
        job = self._active.get(str(job_id))
        if job is None or self._loop is None or self._loop.is_closed():
            return False
        self._loop.call_soon_threadsafe(self._cancel, job, str(reason))
        return True

    def cancel_all_jobs(self, reason: str = "") -> int:
        """Cancels every job this worker runs; returns how many."""
        return sum(self.cancel_job(job_id, reason) for job_id in list(self._active))

    def is_running(self) -> bool:
        return self._started.is_set() and not self._stopped.is_set()

    @property
    def active_count(self) -> int:
        return len(self._active)

    def wait_until_closed(self, timeout: float | None = None) -> bool:
        return self._stopped.wait(timeout)

    # --- manual processing (no processor) -------------------------------------------------
    def get_next_job(
        self, token: str | None = None, block: bool = True, timeout: float | None = None
    ) -> Job | None:
        """Takes and locks one job; with `block`, waits on the queue's marker for up to
        `timeout` s (drain_delay by default) when none is ready."""
        token = token or self._next_token()
        client = self.queue.client
        deadline = time.monotonic() + (self.drain_delay if timeout is None else timeout)
        while True:
            result = scripts.run(
                client,
                "move_to_active",
                [self.queue.keys.meta],
                self._fetch_args([token]),
            )
            jobs = self._jobs_from(result[0], [token])
            if jobs:
                if jobs[0].repeat_job_key:
                    schedulers.advance(self.queue, jobs[0])
                self._emit("active", jobs[0])  # as Node's getNextJob (there with prev "waiting")
                return jobs[0]
            remaining = deadline - time.monotonic()
            if not block or remaining <= 0:
                return None
            wait = remaining
            if result[2]:
                wait = min(wait, max(0.001, (result[2] - now_ms()) / 1000))
            # stays under redis-py's default socket timeout (5 s); the loop waits the rest
            client.bzpopmin(self.queue.keys.marker, min(wait, 4.0))

    def start_stalled_check_timer(self) -> threading.Thread:
        """Runs the stalled-job check every stalled_interval in a background thread."""

        def loop() -> None:
            while not self._closing:
                try:
                    for job_id in self.queue.check_stalled(
                        self.max_stalled_count, self.stalled_interval
                    ):
                        self._emit("stalled", job_id)
                except redis.RedisError as error:
                    self._emit("error", error)
                if self._stopped.wait(self.stalled_interval / 1000):
                    return

        thread = threading.Thread(target=loop, name="flowjobs-stalled-check", daemon=True)
        thread.start()
        return thread

    # --- internals ------------------------------------------------------------------------
    def _emit(self, event: str, *args: Any) -> None:
        for listener in self._listeners.get(event, ()):
            try:
                listener(*args)
            except Exception:
                logger.exception("worker listener for %r failed", event)

    def _next_token(self) -> str:
        return f"{self._token_base}:{next(self._token_numbers)}"

    def _fetch_args(self, tokens: list[str]) -> list[Any]:
        return [
            self.queue.keys.qualified,
            now_ms(),
            *self.fetch.args()[:3],
            self.fetch.worker_name or "",
            *tokens,
        ]

    def _jobs_from(self, fetched: list, tokens: list[str]) -> list[Job]:
        jobs = []
        for token, (job_id, flat) in zip(tokens, fetched, strict=False):
            job = Job.from_flat(self.queue, job_id, flat)
            job.token = token
            jobs.append(job)
        return jobs

    def _free_slots(self) -> int:
        if not self._direct:
            return self.concurrency - len(self._active) - self._reserved
        # a running lane holds its slot from its first job to its end, between jobs too;
        # a lane's job in _active is counted by its lane (list(): lanes change the dict)
        outside = sum(1 for job in list(self._active.values()) if not job.in_lane)
        return self.concurrency - outside - self._reserved - self._lanes_running

    def _can_fetch(self) -> bool:
        return not (self._closing or self._paused) and time.monotonic() >= self._limit_until

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.current_thread()
        # A processor runs at once, up to its first real wait: quick jobs cost no
        # scheduling round of the event loop. Eager tasks exist from Python 3.12 on.
        if _EAGER_TASKS:
            self._loop.set_task_factory(_eager_task)
        self._wake = asyncio.Event()
        self._lane_started = asyncio.Event()  # see _give_back_taken_ahead
        self._blocking_task: asyncio.Task | None = None
        self._aclient = async_client(self._connection)
        # its socket timeout outlasts the longest wait on the marker (drain_delay), so a
        # silent connection (a half-open cut) is noticed soon after the wait should end
        self._blocking_client = async_client(
            self._connection, blocking_wait_s=self.drain_delay, single_connection_client=True
        )
        self.queue._aclient = self._aclient
        if self._pool is not None:
            # threads that wait on the child processes
            self._executor = ThreadPoolExecutor(
                self.concurrency, thread_name_prefix=f"flowjobs-{self.queue.name}"
            )
        elif not self._is_async:
            self._threads = ThreadPool(self._loop, self.concurrency, f"flowjobs-{self.queue.name}")
        tasks: list[asyncio.Task] = []
        watch = loopwatch.LoopWatch(self._loop, self.queue.name, self._active, self.lock_duration)
        try:
            await self._connect()
            self._free_lanes = list(self._lanes)
            if self._pool is not None:
                await self._pool.start(self._executor)  # type: ignore[arg-type]
            cancels = None
            # (a refusal, e.g. an ACL user without channel rights, is reported by the
            # listener, which tries again)
            with contextlib.suppress(redis.RedisError, OSError):
                cancels = await self._subscribe_cancels()
            self._started.set()
            tasks = [asyncio.create_task(self._fetcher())]
            tasks.append(asyncio.create_task(self._cancel_listener(cancels)))
            if not self.skip_lock_renewal:
                tasks.append(asyncio.create_task(self._lock_renewer()))
            if not self.skip_stalled_check:
                tasks.append(asyncio.create_task(self._stalled_checker()))
            if self._is_async:
                tasks.append(watch.start())
            if self._direct and self.fetch_ahead:
                tasks.append(asyncio.create_task(self._give_back_taken_ahead()))
            await tasks[0]
            await self._drain_active()
        except BaseException as error:
            if not isinstance(error, asyncio.CancelledError):
                self._fatal = error
                logger.error(
                    "worker for %s (Redis at %s) stopped: %s",
                    self.queue.keys.qualified,
                    describe(self._connection),
                    error,
                )
        finally:
            self._started.set()
            watch.stop()
            self._closing = True  # the background loops stop on it too (see _winding_down)
            if self._giving_back is not None:
                tasks.append(self._giving_back)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if self._pool is not None:
                self._pool.close(force=self._force)
            if self._executor is not None:
                self._executor.shutdown(wait=not self._force, cancel_futures=True)
            if self._threads is not None:
                self._threads.shutdown(wait=not self._force)
            for lane in getattr(self, "_lanes", []):
                if isinstance(lane, scripts.Lane):
                    await lane.release(self._aclient.connection_pool)
            await self._aclient.aclose()
            await self._blocking_client.aclose()
            self._emit("closed")

    async def _connect(self) -> None:
        delay = 0.1
        while True:
            try:
                name = f"{self.queue.prefix}:{base64.b64encode(self.queue.name.encode()).decode()}"
                if self.name:
                    name += f":w:{self.name}"
                await self._blocking_client.client_setname(name)
                await scripts.aload_all(self._aclient)
                await self._write_group_limits()
                await self._check_eviction_policy()
                # in here: Redis lost between the checks and the lanes' connections (a
                # cut during start-up) stopped the worker instead of a wait for it
                self._lanes = await self._take_lanes()
                return
            except redis.AuthenticationError:
                raise  # wrong credentials do not fix themselves: stop with the error
            except (redis.ConnectionError, redis.TimeoutError, OSError) as error:
                if self._closing:
                    raise
                await self._connection_lost(error, delay)
                delay = min(delay * 2, CONNECTION_RETRY_MAX_S)

    async def _take_lanes(self) -> list[Any]:
        """The two connections finished jobs are recorded on (see `_send_records`)."""
        if is_cluster(self._aclient):
            return [scripts.ClusterLane(self._aclient) for _ in range(2)]
        pool = self._aclient.connection_pool
        lanes: list[Any] = []
        try:
            for _ in range(2):
                lanes.append(scripts.Lane(await pool.get_connection()))
        except BaseException:
            for lane in lanes:
                await lane.release(pool)
            raise
        return lanes

    async def _check_eviction_policy(self) -> None:
        """Warns unless Redis runs with maxmemory-policy noeviction: any other policy lets
        a full Redis delete job hashes, locks and queue keys, i.e. lose jobs silently."""
        try:
            answer = await self._aclient.config_get("maxmemory-policy")
        except redis.ResponseError as error:
            # CONFIG renamed away (managed services) or not granted to this ACL user
            logger.info(
                "cannot read maxmemory-policy of Redis at %s (%s); it must be noeviction",
                describe(self._connection),
                error,
            )
            return
        policies = {
            value
            for key, value in (answer or {}).items()
            if key == "maxmemory-policy" and isinstance(value, str)
        }
        for policy in sorted(policies):
            warning = eviction_warning(describe(self._connection), policy)
            if warning:
                logger.warning(warning)

    def _winding_down(self) -> bool:
        """Whether a background loop (stalled check, cancel listener) should end: the
        worker is closing, or the loop's task was cancelled (see _task_cancelled)."""
        return self._closing or _task_cancelled()

    def _jobs_done(self) -> bool:
        """Whether a loop that serves the running jobs (lock renewal, the give-back of
        jobs taken ahead) should end: its task was cancelled, or the worker is closing
        and none of its jobs is left. A graceful close waits for its jobs: their locks
        are renewed until they end."""
        if _task_cancelled():
            return True
        return self._closing and not self._active and not self._lanes_running

    def _cancel_blocking(self) -> None:
        if self._blocking_task is not None:
            self._blocking_task.cancel()

    async def _fetcher(self) -> None:
        retry_delay = 0.1
        while not self._closing:
            if not self._can_fetch() or self._free_slots() <= 0:
                # one reading of the clock: a rate limit that ran out between two readings
                # used to leave an idle worker waiting for a wake-up that never came
                remaining = self._limit_until - time.monotonic()
                if remaining > 0:
                    await self._wait_wake(remaining)
                elif self._closing or self._paused or self._free_slots() <= 0:
                    await self._wait_wake(None)
                continue
            count = self._free_slots()
            tokens = [self._next_token() for _ in range(count)]
            self._reserved += count
            try:
                fetched, rate_delay, delay_until = await scripts.arun(
                    self._aclient,
                    "move_to_active",
                    [self.queue.keys.meta],
                    self._fetch_args(tokens),
                )
                retry_delay = 0.1
                self._outage.back()
            except (redis.ConnectionError, redis.TimeoutError, OSError) as error:
                self._reserved -= count
                self._unanswered_tokens.update(tokens)
                await self._connection_lost(error, retry_delay)
                retry_delay = min(retry_delay * 2, CONNECTION_RETRY_MAX_S)
                continue
            except redis.ResponseError as refused:
                # a script error must not stop the worker (and with it the queue)
                self._reserved -= count
                error = await self._described(refused)
                logger.error(
                    "fetching jobs of queue %s failed (%s); retrying in %.1fs",
                    self.queue.keys.qualified,
                    error,
                    retry_delay,
                )
                self._emit("error", error)
                await self._wait_wake(retry_delay)
                retry_delay = min(retry_delay * 2, CONNECTION_RETRY_MAX_S)
                continue
            self._reserved -= count
            self._give_back_unanswered_soon()
            if fetched:
                self._start_jobs(self._jobs_from(fetched, tokens))
                continue
            if rate_delay > 0:
                self._rate_limited(rate_delay)
                continue
            if self._processed_since_drained and not self._active:
                self._processed_since_drained = False
                self._emit("drained")
            await self._wait_for_marker(delay_until)

    async def _described(self, error: redis.RedisError) -> redis.RedisError:
        """`error`, or the `ForeignKeyValue` it stands for (see `foreign_value_error`; the
        keys are looked up on a thread, so the loop goes on)."""
        if not isinstance(error, redis.ResponseError):
            return error
        described = await asyncio.to_thread(
            foreign_value_error, self.queue.client, [self.queue.keys.qualified], error
        )
        return described or error

    async def _connection_lost(self, error: BaseException, delay: float) -> None:
        """Logged once per outage. The pool's other connections went the same way as
        this one (a dead server, a half-open cut): drop them all, so that no call waits
        out its socket timeout on one of them; then wait `delay` before trying again."""
        self._lost(error)
        await self._drop_connections()
        await self._wait_wake(delay)

    def _lost(self, error: BaseException) -> None:
        self._outage.lost(error)
        self._emit("error", error)

    async def _drop_connections(self) -> None:
        """Closes the pooled connections and the one the wait for new jobs uses: after a
        half-open cut each of them is dead, and one left open (a wait for jobs begun
        during the cut) was found out only at its own timeout, after Redis was back."""
        for client in (self._aclient, self._blocking_client):
            if not is_cluster(client):
                with contextlib.suppress(Exception):
                    await client.connection_pool.disconnect()

    def _give_back_unanswered_soon(self, again: bool = False) -> None:
        """After Redis answered again (on the loop): looks for the jobs that fetches with
        lost answers took, unless that is under way or there were none. `again` (at a
        lock renewal): for those of fetches looked for before, too."""
        if again and self._looked_for:
            now = time.monotonic()
            for token, until in list(self._looked_for.items()):
                if now >= until:  # past it, the stalled check is the backstop
                    del self._looked_for[token]
        wanted = self._unanswered_tokens or (again and self._looked_for)
        if wanted and self._giving_back is None:
            self._giving_back = self._loop.create_task(self._give_back_unanswered())

    async def _give_back_unanswered(self) -> None:
        """Moves the jobs fetched under an unanswered token back to the head of the wait
        list, where this or another worker takes them at once. Left alone, they waited
        under a lock nobody renews until it ran out and the stalled check saw them: the
        lock duration and up to two stalled intervals (30-90 s by default), with a
        stalled count against them. The tokens are not reused, so a job that holds one
        was taken by a lost fetch; tokens whose fetch never reached Redis match nothing.
        A fetch can reach Redis after this look (a path that delivers it late): each
        lock renewal looks again, for a lock duration, for the tokens looked for before.
        The jobs a lane took ahead and gives up (see _give_back_taken_ahead) go the same
        way."""
        try:
            new = set(self._unanswered_tokens)
            tokens = new | self._looked_for.keys()
            active = await self._aclient.lrange(self.queue.keys.key("active"), 0, -1)
            if active:
                pipe = self._aclient.pipeline(transaction=False)
                for job_id in active:
                    pipe.get(f"{self.queue.keys.job(job_id)}:lock")
                locks = await pipe.execute()
                taken = [
                    (job_id, lock)
                    for job_id, lock in zip(active, locks, strict=True)
                    if lock in tokens
                ]
                for job_id, token in taken:
                    # checks the token: a job the stalled check moved meanwhile is left be;
                    # "1": the lost fetch's start is not counted (ats)
                    await scripts.arun(
                        self._aclient,
                        "move_to_wait",
                        [self.queue.keys.meta],
                        [self.queue.keys.qualified, job_id, token, "1"],
                    )
                if taken:
                    logger.info(
                        "queue %s: gave back %d job(s) this worker took and will not run "
                        "(a fetch whose answer was lost to a connection fault, or a job "
                        "taken ahead that waited behind a long one): %s",
                        self.queue.name,
                        len(taken),
                        ", ".join(job_id for job_id, _ in taken),
                    )
                    self._wake.set()
            look_until = time.monotonic() + self.lock_duration / 1000
            self._looked_for.update(dict.fromkeys(new, look_until))
            for _, token in taken:
                self._looked_for.pop(token, None)  # a token takes one job
            self._unanswered_tokens -= new
        except (redis.ConnectionError, redis.TimeoutError, OSError) as error:
            self._lost(error)  # the outage's one line; the tokens wait for the next answer
        except redis.RedisError as error:
            # kept for the next answer (the stalled check remains the backstop)
            logger.warning(
                "queue %s: could not look for the jobs of lost fetches: %s", self.queue.name, error
            )
        finally:
            self._giving_back = None

    def _rate_limited(self, delay_ms: int) -> None:
        self._limit_until = time.monotonic() + min(delay_ms, MAXIMUM_RATE_LIMIT_DELAY_MS) / 1000

    async def _wait_wake(self, timeout: float | None) -> None:
        self._wake.clear()
        # asyncio.timeout (None: no limit), not wait_for: see CancellationSignal.wait_async
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._wake.wait()

    async def _wait_for_marker(self, delay_until: int) -> None:
        timeout = self.drain_delay
        if delay_until:
            # never longer than drain_delay: the blocking client's socket timeout is set
            # just above it
            timeout = min(max((delay_until - now_ms()) / 1000, 0.001), self.drain_delay)
        self._blocking_task = asyncio.ensure_future(
            self._blocking_client.bzpopmin(self.queue.keys.marker, timeout)
        )
        try:
            await self._blocking_task
            self._outage.back()
            self._marker_refused = False
        except asyncio.CancelledError:
            if self._closing:
                return
            # cancelled because slots freed up: the connection was reset, make a new one
        except (redis.ConnectionError, redis.TimeoutError, OSError) as error:
            await self._connection_lost(error, 1.0)
        except redis.ResponseError as error:
            # another client's value at the marker key (BZPOPMIN refuses it): the marker
            # only wakes this worker, which fetches on a timer instead of stopping
            # (said once until a wait succeeds: with delayed jobs due soon the timer is
            # short, and each turn would log it again)
            self._blocking_task = None
            if not self._marker_refused:
                self._marker_refused = True
                logger.error(
                    "waiting for jobs of queue %s on %s failed (%s); fetching on a timer "
                    "(at most every %.3g s) until it is mended",
                    self.queue.keys.qualified,
                    self.queue.keys.marker,
                    error,
                    self.drain_delay,
                )
                self._emit("error", error)
            await self._wait_wake(timeout)
        finally:
            self._blocking_task = None

    def _start_jobs(self, jobs: list[Job]) -> None:
        for job in jobs:
            self._active[job.id] = job
            if self._direct and self._lanes_running < self.concurrency:
                self._lanes_running += 1
                self._lane_started.set()
                job.in_lane = True
                self._loop.create_task(self._run_direct_lane(job))
            else:
                self._loop.create_task(self._process(job))

    async def _process(self, job: Job) -> None:
        self._emit("active", job)
        joblog.started(job, self.queue.name)
        try:
            if job.repeat_job_key:
                await self._advance_scheduler(job)
            self._refuse_unprocessable(job)
            result = await self._run_processor(job)
            outcome, value = "completed", result
        except asyncio.CancelledError:
            self._active.pop(job.id, None)
            raise
        except BaseException as error:  # noqa: BLE001 - a processor may raise anything
            outcome, value = _outcome_of(error)
        self._finished.append((job, outcome, value))
        if self.concurrency == 1 and self._free_lanes:
            # no other job can finish in this round to share the batch: record it now,
            # in this task (not one turn of the event loop later, nor in a task of its
            # own). The job has left _active by the batch's first step, so a cancel
            # request cannot reach this task while it records.
            await self._record(*self._next_batch())
        else:
            self._schedule_records()

    def _refuse_unprocessable(self, job: Job) -> None:
        """Raises UnrecoverableError, naming the problem, for a job no processor can run,
        and JobCancelled for one cancelled before it began (a lane took it ahead, or the
        request came before a child process had it)."""
        if job.cancel_reason is not None:
            if self._pool is not None:  # (`_cancel` answers for the other kinds)
                self._answer_cancel(job, cancellation.NOT_STARTED)
            raise job.cancelled_error()
        if job.deferred_failure:
            raise UnrecoverableError(job.deferred_failure)
        problem = job.decode_problem()
        if problem:
            raise UnrecoverableError(problem)
        if _JOB_HASH_FIELDS.isdisjoint(job.raw):
            raise UnrecoverableError(
                f'job "{job.id}" of queue "{self.queue.name}" has no job hash: its id was '
                "queued without the job (removed, or pushed by a foreign producer)"
            )

    # --- direct lanes: a synchronous processor up to concurrency DIRECT_LANES_UP_TO -------
    async def _run_direct_lane(self, job: Job) -> None:
        """Runs `job` and the jobs after it in one thread that also records each and takes
        the next in the same round trip (as Node's worker does on its one thread): no
        hand-off between that thread and the loop per job. While its jobs are short, the
        lane takes one job ahead and runs it while the record of the job before is under
        way (see `_run_jobs_on`). The loop meanwhile renews the locks, listens for cancel
        requests, checks for stalled jobs and gives back a job taken ahead of one that
        runs long. What the lane does not record itself (a rate-limited job, a broken
        connection) comes back here and takes the loop's path."""
        held = [job]  # the lane's jobs of the moment: the one it runs, the one taken ahead
        try:
            unrecorded, unrun = await self._threads.run(self._direct_lane, held)  # type: ignore[union-attr]
        except Exception:  # a fault of the lane itself, not a processor's error
            logger.exception("the worker thread of queue %s failed", self.queue.name)
            unrecorded, unrun = [], []
            # left unrenewed, their locks run out: the stalled check gives them another run
            for lost in held:
                self._active.pop(lost.id, None)
        finally:
            self._lanes_running -= 1
        for item in unrecorded:
            item[0].in_lane = False
        for taken in unrun:
            taken.in_lane = False
        if any(item[0].id in self._maybe_recorded for item in unrecorded):
            # the lane's connection broke: the loop's went the same way, most likely
            # (see _connection_lost); a lock renewal must not meet one of them later
            # and wait out its timeout
            await self._drop_connections()
        if unrun:
            self._start_jobs(unrun)
        if unrecorded:
            self._finished.extend(unrecorded)
            self._schedule_records()  # which wakes the fetcher once they are recorded
        else:
            self._wake.set()  # the fetcher decides what to wait for

    def _direct_lane(self, held: list[Job]) -> tuple[list[tuple[Job, str, Any]], list[Job]]:
        """The lane's thread: process, record and take the next until there is none (the
        queue is empty, or the worker is closing, paused or rate-limited). `held` holds
        the lane's jobs of the moment. Returns the outcomes it could not record and the
        jobs it took and did not run, for the loop."""
        lane = scripts.SyncLane(self.queue.client)
        try:
            return self._run_jobs_on(lane, held)
        finally:
            lane.release()

    def _run_jobs_on(
        self, lane: scripts.SyncLane, held: list[Job]
    ) -> tuple[list[tuple[Job, str, Any]], list[Job]]:
        job = held[0]
        outcome, value, short = self._timed_process(job)
        ahead: Job | None = None  # taken ahead of job (see _lane_tokens), not run yet
        while True:
            plan = self._record_plan(job, outcome, value)
            if plan is None:  # moved by the processor itself: nothing to record
                self._active.pop(job.id, None)
                self._processed_since_drained = True
                if ahead is None or not self._claim_ahead(ahead):
                    return [], []
                job, ahead = ahead, None
                held[:] = [job]
                outcome, value, short = self._timed_process(job)
                continue
            # (recorded as what the plan says: a result that is not JSON fails the job;
            # what goes back to the loop is the outcome as the processor left it)
            call, recorded_as, recorded_value, retry_delay_ms = plan
            # the job taken ahead runs while this record is under way, unless it was
            # given back meanwhile (see _give_back_taken_ahead)
            following = ahead if ahead is not None and self._claim_ahead(ahead) else None
            ahead = None
            if recorded_as == "rate-limited":  # the loop gives it back, waits out the limit
                return [(job, outcome, value)], [following] if following else []
            ran: list[tuple[str, Any, bool]] = []
            # the lane's slot is its own (_lanes_running): its fetch reserves nothing
            with self._counting:
                self._lane_fetches += 1  # before the check: see pause()
            # out of _active while its record is under way: no lock renewal meets a job
            # whose record may have ended its lock (it is back if the record is not sent)
            self._active.pop(job.id, None)
            tokens: list[str] = []
            ahead_token = None
            try:
                tokens, ahead_token = self._lane_tokens(short, following)
                # the token of a job taken ahead goes marked "?" (see fetchJobs)
                sent = [*tokens[:-1], f"?{ahead_token}"] if ahead_token else tokens
                calls = self._with_fetch_next([call], sent)
                if following is None:
                    results = lane.run_calls(calls)
                else:
                    results = lane.run_calls(calls, partial(self._run_into, ran, following))
            except (redis.ConnectionError, redis.TimeoutError, OSError) as error:
                # the loop's path sends it again once Redis answers; the first send may
                # have recorded it, so a refusal then is no news (see _after_record)
                self._lost(error)
                self._maybe_recorded.add(job.id)
                self._unanswered_tokens.update(tokens)
                self._settle_ahead(ahead_token, None)
                self._active[job.id] = job
                unrecorded = [(job, outcome, value)]
                if following is not None and ran:
                    return [*unrecorded, (following, *ran[0][:2])], []
                return unrecorded, [following] if following else []
            finally:
                with self._counting:
                    self._lane_fetches -= 1
            self._outage.back()
            if self._after_record(job, recorded_as, recorded_value, call, results[0]):
                joblog.recorded(job, self.queue.name, recorded_as, recorded_value, retry_delay_ms)
            self._processed_since_drained = True
            taken = self._taken(results[-1], tokens) if tokens else []
            if following is None and taken:  # the next, to run now (not taken ahead)
                following = taken.pop(0)
                following.in_lane = True  # before it is in _active: _free_slots counts it once
                self._active[following.id] = following
            ahead = self._settle_ahead(ahead_token, taken[0] if taken else None)
            if following is None:
                return [], []
            job = following
            held[:] = [job, ahead] if ahead else [job]
            if ran:
                outcome, value, short = ran[0]
            else:
                outcome, value, short = self._timed_process(job)

    def _lane_tokens(self, short: bool, following: Job | None) -> tuple[list[str], str | None]:
        """The lock tokens of the jobs a lane's record takes: the next job, unless one
        runs while the record is under way (`following`), and one ahead of it. A job is
        taken ahead after a short one (FETCH_AHEAD_UNDER_S) while every slot of the
        worker is busy: it waits, locked, while the job in front of it runs, and it is
        given back to the queue if that runs long (see _give_back_taken_ahead). Returns
        the tokens, and the last of them when it is for a job taken ahead (the script
        takes none while the queue has a global or group limit, see fetchJobs)."""
        if not self._can_fetch():
            return [], None
        tokens = [] if following is not None else [self._next_token()]
        if not (short and self.fetch_ahead and self._free_slots() <= 0):
            return tokens, None
        token = self._next_token()
        with self._ahead_lock:
            self._taken_ahead[token] = time.monotonic()
        return [*tokens, token], token

    def _settle_ahead(self, token: str | None, taken: Job | None) -> Job | None:
        """After a lane's record: the job that took the token `token` for a job ahead,
        now in _active; None if the fetch took none under it or it was given back
        meanwhile (see _give_back_taken_ahead), whose token is then forgotten."""
        if token is None:
            return None
        with self._ahead_lock:
            if taken is not None and taken.token == token and token in self._taken_ahead:
                taken.in_lane = True
                self._active[taken.id] = taken
                return taken
            self._taken_ahead.pop(token, None)
            return None

    def _claim_ahead(self, job: Job) -> bool:
        """Whether the lane may run `job`, taken ahead: False if it was given back (the
        give-back took it out of _active then, see _give_back_taken_ahead)."""
        with self._ahead_lock:
            return self._taken_ahead.pop(job.token, None) is not None  # type: ignore[arg-type]

    async def _give_back_taken_ahead(self) -> None:
        """Gives back to the queue each job a lane took ahead that waited behind a job
        that runs long (FETCH_AHEAD_GIVE_BACK_S), so another slot or worker runs it.
        Looks while lanes run; an idle worker waits for the next lane (no timer)."""
        while not self._jobs_done():
            if not self._lanes_running:
                self._lane_started.clear()
                await self._lane_started.wait()
                continue
            await asyncio.sleep(FETCH_AHEAD_GIVE_BACK_S / 2)
            if not self._taken_ahead:
                continue
            due = time.monotonic() - FETCH_AHEAD_GIVE_BACK_S
            with self._ahead_lock:
                tokens = {t for t, since in self._taken_ahead.items() if since <= due}
                for token in tokens:
                    del self._taken_ahead[token]
                for waiting in [j for j in self._active.values() if j.token in tokens]:
                    del self._active[waiting.id]
            if tokens:
                self._unanswered_tokens.update(tokens)
                self._give_back_unanswered_soon()

    def _run_into(self, ran: list[tuple[str, Any, bool]], job: Job) -> None:
        ran.append(self._timed_process(job))

    def _timed_process(self, job: Job) -> tuple[str, Any, bool]:
        """`_process_here`, and whether the job was short (see FETCH_AHEAD_UNDER_S)."""
        started = time.monotonic()
        outcome, value = self._process_here(job)
        return outcome, value, time.monotonic() - started < FETCH_AHEAD_UNDER_S

    def _process_here(self, job: Job) -> tuple[str, Any]:
        """`_process` in the calling thread: the job's outcome and its value."""
        self._emit("active", job)
        joblog.started(job, self.queue.name)
        try:
            if job.repeat_job_key:
                try:
                    schedulers.advance(self.queue, job)
                except (redis.RedisError, FlowJobsError) as error:
                    self._scheduler_not_advanced(job, error)
            self._refuse_unprocessable(job)
        except BaseException as error:  # noqa: BLE001
            return _outcome_of(error)
        try:
            with telemetry.process_span(job, self.queue.name):
                args = _processor_args(job, self._pass_token, self._pass_signal)
                return "completed", self.processor(*args)  # type: ignore[misc]
        except BaseException as error:  # noqa: BLE001 - a processor may raise anything
            return _outcome_of(_cancelled_instead(job, carried(error)))

    async def _run_processor(self, job: Job) -> Any:
        """Runs the processor (in a child process, on the loop or in a thread), under the
        job's timeout and in its telemetry span; a cancelled job fails as JobCancelled."""
        timeout = job.opts.get("timeout") or self.job_timeout_ms
        try:
            with telemetry.process_span(job, self.queue.name):
                if self._pool is not None:
                    return await self._pool.run(job, timeout, self._executor)  # type: ignore[arg-type]
                args = _processor_args(job, self._pass_token, self._pass_signal)
                if self._is_async:
                    # awaited in this job's own task (no second task per job): a cancel
                    # request cancels this task, and the except below turns the
                    # CancelledError into JobCancelled
                    job._task = asyncio.current_task()  # type: ignore[attr-defined]
                    if not timeout:
                        return await self.processor(*args)  # type: ignore[misc]
                    try:
                        async with asyncio.timeout(timeout / 1000):
                            return await self.processor(*args)  # type: ignore[misc]
                    except TimeoutError:
                        if job.cancel_reason is not None:
                            raise
                        raise ProcessorTimedOut(f"processor timed out after {timeout} ms") from None
                return await self._threads.run(  # type: ignore[union-attr]
                    telemetry.in_context(self.processor), *args
                )
        except BaseException as error:
            if isinstance(error, JobCancelled) and self._pool is not None:
                self._answer_cancel(job, cancellation.KILLED)  # the pool killed the child
            cancelled = _cancelled_instead(job, error)
            if cancelled is not error:
                raise cancelled from error
            raise

    def _cancel(self, job: Job, reason: str) -> None:
        """A cancel request reached the job this worker runs: flag it, and interrupt an
        async processor (a child process is killed by the pool, which watches the flag)."""
        if job.cancel_reason is not None:
            return
        logger.info("job %s of queue %s: cancelled (%s)", job.id, self.queue.name, reason)
        job.mark_cancelled(reason)
        task = getattr(job, "_task", None)
        if job.runs_in_thread or (task is None and self._pool is None):
            # a thread cannot be stopped from outside: its processor has the signal
            self._answer_cancel(job, cancellation.SIGNALLED)
        elif task is not None and not task.done():
            task.cancel()
            self._answer_cancel(job, cancellation.INTERRUPTED)

    def _answer_cancel(self, job: Job, how: str) -> None:
        """Tells whoever asked (the admin waits for it) what this worker did."""

        async def publish() -> None:
            with contextlib.suppress(redis.RedisError, OSError):
                await self._aclient.publish(
                    cancellation.answer_channel(self.queue.keys),
                    cancellation.answer(job.id, job.token, how),
                )

        asyncio.ensure_future(publish())

    def _cancel_request(self, job_id: str, token: str | None, reason: str) -> None:
        job = self._active.get(job_id)
        if job is not None and job.token == token:
            self._cancel(job, reason)

    async def _subscribe_cancels(self) -> Any:
        pubsub = self._aclient.pubsub(ignore_subscribe_messages=True)
        await pubsub.subscribe(cancellation.channel(self.queue.keys), self._probe_channel)
        return pubsub

    @property
    def _probe_channel(self) -> str:
        return f"{cancellation.channel(self.queue.keys)}:probe:{self._token_base}"

    async def _read_cancels(self, pubsub: Any) -> None:
        """Hands published cancel requests on. Every PUBSUB_PROBE_INTERVAL_S this worker
        publishes a probe to itself: a subscription that does not deliver it within the
        socket timeout sits on a silent connection (a half-open cut) and is replaced."""
        last_heard = time.monotonic()
        probed_at: float | None = None
        while not self._winding_down():
            message = await pubsub.get_message(timeout=1.0)
            now = time.monotonic()
            if message is not None and message.get("type") == "message":
                if message.get("channel") == self._probe_channel:
                    last_heard, probed_at = now, None
                    continue
                request = cancellation.parse(message.get("data"))
                if request is not None:
                    self._cancel_request(*request)
            if probed_at is None and now - last_heard >= PUBSUB_PROBE_INTERVAL_S:
                probed_at = now
                await self._aclient.publish(self._probe_channel, "probe")
            elif probed_at is not None and now - probed_at > SOCKET_TIMEOUT_S:
                raise redis.TimeoutError("the cancel channel did not deliver this worker's probe")

    async def _cancel_listener(self, pubsub: Any) -> None:
        """Receives cancel requests (queue.cancel_job) as they are published; lock renewal
        reads them from the job hashes too, in case a message was missed."""
        delay = 0.1
        while not self._winding_down():
            try:
                if pubsub is None:
                    pubsub = await self._subscribe_cancels()
                    delay = 0.1
                await self._read_cancels(pubsub)
            except (redis.ConnectionError, redis.TimeoutError, OSError):
                if self._winding_down():
                    return
                await asyncio.sleep(delay)
                delay = min(delay * 2, CONNECTION_RETRY_MAX_S)
            except redis.ResponseError as error:
                logger.warning(
                    "worker for %s cannot subscribe to cancel requests (%s): a cancelled "
                    "job learns of it at the next lock renewal instead (every %d ms)",
                    self.queue.keys.qualified,
                    error,
                    self.lock_renew_time,
                )
                return
            finally:
                if pubsub is not None:
                    with contextlib.suppress(Exception):
                        await pubsub.aclose()
                    pubsub = None

    async def _check_cancel_requests(self) -> None:
        jobs = list(self._active.values())
        if not jobs:
            return
        pipe = self._aclient.pipeline(transaction=False)
        for job in jobs:
            pipe.hget(job.key, cancellation.FIELD)
        for job, stored in zip(jobs, await pipe.execute(), strict=True):
            request = cancellation.parse(stored, job.id)
            if request is not None:
                self._cancel_request(*request)

    async def _write_group_limits(self) -> None:
        limits = self.group_limits
        if limits["concurrency"] is None and limits["max_jobs"] is None:
            return
        await asyncio.to_thread(groups.set_group_limits, self.queue, **limits)

    async def _advance_scheduler(self, job: Job) -> None:
        """Taking a scheduler's iteration produces its next one (as BullMQ's worker does),
        before the processor runs and whatever its outcome."""
        try:
            await schedulers.aadvance(self.queue, job, self._aclient)
        except (redis.RedisError, FlowJobsError) as error:
            self._scheduler_not_advanced(job, error)

    def _scheduler_not_advanced(
        self, job: Job, error: Exception, delay: float = REFUSED_RECORD_RETRY_S
    ) -> None:
        """The next run of `job`'s scheduler could not be made (Redis unreachable, or one
        of the scheduler's keys holding another client's value): nothing was written, and
        no one else would make it, so this worker tries again after `delay`, doubling up
        to REFUSED_RECORD_RETRY_MAX_S, while it runs. Making it is idempotent: once
        another worker or an upsert has moved the scheduler on, a retry makes nothing.
        Runs on the loop or in a lane's thread."""
        logger.warning(
            "job %s: could not schedule the next run: %s; trying again in %.3g s",
            printable(job.id),
            error,
            delay,
        )
        self._emit("error", error)
        self._later(delay, self._advance_again, job, delay)

    def _advance_again(self, job: Job, delay: float) -> None:
        if not self._closing:
            self._loop.create_task(self._retry_advance(job, delay))

    async def _retry_advance(self, job: Job, delay: float) -> None:
        try:
            await schedulers.aadvance(self.queue, job, self._aclient)
        except (redis.RedisError, FlowJobsError) as error:
            self._scheduler_not_advanced(job, error, _retry_delay_after(delay))

    def _schedule_records(self) -> None:
        """Records finished jobs at the end of this round of the event loop, so that the
        jobs finishing in the same round share a batch: a thread pool hands its results
        over a few at a time, and each woken job would otherwise take a free lane alone."""
        if not self._records_scheduled:
            self._records_scheduled = True
            self._loop.call_soon(self._send_records)

    def _send_records(self) -> None:
        """Up to two half-size batches in flight, each on its own connection, so Redis
        runs one batch while this process handles the other's jobs."""
        self._records_scheduled = False
        while self._finished and self._free_lanes:
            asyncio.ensure_future(self._record(*self._next_batch()))

    def _next_batch(self) -> tuple[Any, list[tuple[Job, str, Any]]]:
        """A free lane and the finished jobs it records next (see `_record`)."""
        lane = self._free_lanes.pop()
        batch = self._finished[: self._batch_size]
        del self._finished[: self._batch_size]
        self._recording += 1
        return lane, batch

    async def _record(self, lane: Any, batch: list[tuple[Job, str, Any]]) -> None:
        try:
            await self._record_batch(lane, batch)
        except Exception as error:
            # the jobs stay active in Redis: the stalled check gives them another run
            logger.exception("could not record %d job(s) of queue %s", len(batch), self.queue.name)
            self._emit("error", error)
        finally:
            self._recording -= 1
            self._free_lanes.append(lane)
            if self._finished:  # jobs that waited for a free lane
                self._schedule_records()

    async def _record_batch(self, lane: Any, batch: list[tuple[Job, str, Any]]) -> None:
        calls: list[scripts.Call] = []
        plans: list[tuple[Job, str, Any, scripts.Call, int]] = []
        for job, outcome, value in batch:
            self._active.pop(job.id, None)
            call = self._record_plan(job, outcome, value)
            if call is not None:
                calls.append(call[0])
                plans.append((job, call[1], call[2], call[0], call[3]))
        fetch_tokens: list[str] = []
        # a job given back for a rate limit must not be fetched again in the same round trip
        limited = any(plan[1] == "rate-limited" for plan in plans)
        if (
            self._can_fetch()
            and self._free_slots() > 0
            and self._blocking_task is None
            and not limited
        ):
            fetch_tokens = [self._next_token() for _ in range(self._free_slots())]
            self._reserved += len(fetch_tokens)
        delay = 0.1
        resent = False
        while True:
            try:
                sent = self._with_fetch_next(calls, fetch_tokens)
                results = await scripts.run_on_lane(lane, sent) if sent else []
                self._outage.back()
                break
            except (redis.ConnectionError, redis.TimeoutError, OSError) as error:
                # a finish not recorded is retried: worst case Redis already has it and
                # answers "not active", which is logged below. Its fetch is sent under new
                # tokens: what the lost one may have taken is given back by its own.
                self._unanswered_tokens.update(fetch_tokens)
                fetch_tokens = [self._next_token() for _ in fetch_tokens]
                await self._connection_lost(error, delay)
                delay = min(delay * 2, CONNECTION_RETRY_MAX_S)
                resent = True
        self._reserved -= len(fetch_tokens)
        self._give_back_unanswered_soon()
        for (job, outcome, value, call, retry_delay_ms), result in zip(
            plans, results, strict=False
        ):
            sent_before = resent or job.id in self._maybe_recorded
            self._maybe_recorded.discard(job.id)
            if self._after_record(job, outcome, value, call, result, sent_before):
                joblog.recorded(job, self.queue.name, outcome, value, retry_delay_ms)
        self._processed_since_drained = True
        if fetch_tokens:
            self._start_jobs(self._taken(results[-1], fetch_tokens))
        if self._free_slots() > 0:
            # slots this batch could not fill: the fetcher decides what to wait for
            self._wake.set()

    def _record_plan(
        self, job: Job, outcome: str, value: Any
    ) -> tuple[scripts.Call, str, Any, int] | None:
        """`_outcome_call`, or the failure of a job whose outcome cannot be recorded;
        None when there is nothing to record (a job the processor moved)."""
        try:
            call = self._outcome_call(job, outcome, value)
            if call is None:
                joblog.recorded(job, self.queue.name, outcome, value)
            return call
        except Exception as error:  # noqa: BLE001 - one job must not stop the others
            return self._unrecordable_call(job, outcome, value, error)

    def _with_fetch_next(self, calls: list[scripts.Call], tokens: list[str]) -> list[scripts.Call]:
        """`calls` followed by a fetch of one job per token: inside the last finish when
        there is one (one script call less per round trip)."""
        if not tokens:
            return calls
        if calls and calls[-1][0] == "move_to_finished":
            name, keys, args = calls[-1]
            return [*calls[:-1], (name, keys, [*args, *tokens])]
        return [*calls, ("move_to_active", [self.queue.keys.meta], self._fetch_args(tokens))]

    def _taken(self, result: Any, tokens: list[str]) -> list[Job]:
        """The jobs a fetch (or a finish's fetch-next) answered with `result` took."""
        if isinstance(result, list):
            fetched, rate_delay, _ = result
            if fetched:
                return self._jobs_from(fetched, tokens)
            if rate_delay > 0:
                self._rate_limited(rate_delay)
        elif isinstance(result, BaseException):
            self._emit("error", result)
        return []  # (0: the last finish fetched nothing, the queue is empty)

    def _outcome_call(
        self, job: Job, outcome: str, value: Any
    ) -> tuple[scripts.Call, str, Any, int] | None:
        """The script call recording the outcome, the outcome as recorded, its value
        and the retry delay (ms) of a failure that will be retried."""
        token = job.token or "0"
        if outcome == "moved":
            return None
        if outcome == "rate-limited":
            return (
                (
                    "move_to_wait",
                    [self.queue.keys.meta],
                    [self.queue.keys.qualified, job.id, token],
                ),
                outcome,
                value,
                0,
            )
        if outcome == "completed":
            try:
                text = completed_value(value, job)
            except InvalidJobData as error:
                outcome, value = "failed", UnrecoverableError(str(error))
            else:
                keep = keep_jobs(job.opts.get("removeOnComplete"), self.remove_on_complete)
                return (
                    finish_call(
                        job,
                        "completed",
                        text,
                        token,
                        keep,
                        None,
                        # fetch-next tokens may be appended to this call: the fetch must
                        # use this worker's lock duration, limiter and name
                        self.fetch,
                        None,
                        self.metrics_max_data_points,
                    ),
                    outcome,
                    value,
                    0,
                )
        plan = plan_failure(job, value, self.backoff_strategies)
        keep = keep_jobs(job.opts.get("removeOnFail"), self.remove_on_fail)
        call = failure_call(
            job, value, token, plan, keep, None, self.fetch, self.metrics_max_data_points
        )
        return call, ("failed" if plan.kind == "fail" else "retried"), value, plan.delay_ms

    def _unrecordable_call(
        self, job: Job, outcome: str, value: Any, error: Exception
    ) -> tuple[scripts.Call, str, Any, int] | None:
        """The job's outcome cannot be written as asked (foreign options no rule of ours
        reads, a backoff strategy that raises): it fails for good, the reason naming
        what broke. If even that cannot be written it is left to the stalled check,
        which moves it out of active."""
        reason = f'cannot record {outcome} of job "{printable(job.id)}": '
        reason += f"{type(error).__name__}: {error}"
        if outcome != "completed" and isinstance(value, BaseException):
            reason += f" (the job failed with: {error_message(value)})"
        failure = UnrecoverableError(reason)
        try:
            # fetch-next tokens may be appended to this call: it carries this worker's
            # fetch settings, as every finish does
            call = failure_call(
                job,
                failure,
                job.token or "0",
                FailurePlan("fail"),
                (-1, "", ""),
                None,
                self.fetch,
                self.metrics_max_data_points,
            )
        except Exception:  # noqa: BLE001
            logger.exception("job %s of queue %s: %s", printable(job.id), self.queue.name, reason)
            return None
        logger.warning("job %s of queue %s: %s", printable(job.id), self.queue.name, reason)
        return call, "failed", failure, 0

    def _after_record(
        self,
        job: Job,
        outcome: str,
        value: Any,
        call: scripts.Call,
        result: Any,
        resent: bool = False,
    ) -> bool:
        """Emits the local event of a recorded outcome; False when Redis refused it.
        `resent`: the call went again after a broken connection, so a refusal most likely
        means the first send reached Redis and recorded the outcome already."""
        # a job held after a refused record (see _hold) is let go whatever happens now,
        # unless it is held again
        held_delay = self._held.pop(job.id, None) if self._held else None
        if isinstance(result, BaseException) or (isinstance(result, int) and result < 0):
            error = (
                result
                if isinstance(result, BaseException)
                else error_for_code(result, job.id, self.queue.name, f"record {outcome}")
            )
            if resent and isinstance(result, int):
                logger.info(
                    "job %s: %s sent again after a broken connection was refused (%s); the "
                    "first send most likely recorded it",
                    printable(job.id),
                    outcome,
                    error,
                )
                return False
            if is_foreign_refusal(error) and self._hold(job, outcome, value, error, held_delay):
                return False
            logger.warning("could not record %s of job %s: %s", outcome, printable(job.id), error)
            self._emit("error", error)
            return False
        if outcome == "rate-limited":
            if isinstance(result, int) and result > 0:
                self._rate_limited(result)
        else:
            note_outcome(job, call, outcome, value)
            self._emit(outcome if outcome == "completed" else "failed", job, value)
        # counted after its listeners ran: a count reached means their work is done
        with self._counting:
            self.jobs_processed += 1
        return True

    def _hold(
        self,
        job: Job,
        outcome: str,
        value: Any,
        error: BaseException,
        delay: float | None = None,
    ) -> bool:
        """Keeps a job whose outcome Redis refused because one of the queue's keys held
        another client's value (a string at `completed`, say; the script wrote nothing):
        the job stays active under this worker, its lock renewed and its slot taken, and
        its outcome is sent again after a while, until Redis takes it. So the job is not
        run again, nor failed as stalled, and its own outcome is recorded once the key is
        mended. False when the worker is closing: the job is left active in Redis, for
        the stalled check. `delay`: the wait its last hold set for this retry (None: the
        first). Runs on the loop or in a lane's thread."""
        if self._closing:
            return False
        delay = delay or REFUSED_RECORD_RETRY_S
        self._held[job.id] = _retry_delay_after(delay)
        job.in_lane = False
        self._active[job.id] = job
        logger.warning(
            "could not record %s of job %s: %s; the job stays active under this worker, "
            "which sends its outcome again in %.3g s",
            outcome,
            printable(job.id),
            error,
            delay,
        )
        self._emit("error", error)
        self._later(delay, self._record_again, job, outcome, value)
        return True

    def _later(self, delay: float, callback: Callable[..., None], *args: Any) -> None:
        """`callback(*args)` on the loop after `delay` s; from any thread (a lane's). A
        loop closed meanwhile runs nothing."""
        try:
            self._loop.call_soon_threadsafe(self._loop.call_later, delay, callback, *args)
        except RuntimeError:
            pass

    def _record_again(self, job: Job, outcome: str, value: Any) -> None:
        if job.id in self._held and not self._closing:  # (a closing worker released it)
            self._finished.append((job, outcome, value))
            self._schedule_records()

    async def _drain_active(self) -> None:
        """Graceful close: wait for running jobs and record them. Jobs held after a
        refused record (see _hold) are released: left active, for the stalled check (at
        each turn: a lane's thread may have held one just as the close began)."""
        while True:
            for job_id in list(self._held):
                self._held.pop(job_id, None)
                if self._active.pop(job_id, None) is not None:
                    logger.warning(
                        "job %s: its outcome was refused (another client's value at a key "
                        "of queue %s); left active, the stalled check gives it another run",
                        printable(job_id),
                        self.queue.name,
                    )
            if self._force or not (
                self._active or self._finished or self._recording or self._lanes_running
            ):
                return
            self._schedule_records()
            await asyncio.sleep(0.005)

    async def _lock_renewer(self) -> None:
        while not self._jobs_done():
            await asyncio.sleep(self.lock_renew_time / 1000)
            self._give_back_unanswered_soon(again=True)
            if not self._active:
                continue
            args: list[Any] = [self.queue.keys.qualified, self.lock_duration]
            renewing = list(self._active.values())
            for job in renewing:
                args += [job.id, job.token or "0"]
            try:
                lost = await scripts.arun(
                    self._aclient,
                    "extend_locks",
                    [self.queue.keys.key("stalled")],
                    args,
                )
                await self._check_cancel_requests()
            except redis.RedisError as error:
                self._emit("error", await self._described(error))
                continue
            if lost:
                self._emit("lock_renewal_failed", list(lost))
            for job_id in lost:
                logger.warning("lost the lock of job %s in queue %s", job_id, self.queue.name)
                self._emit("error", FlowJobsError(f'lost the lock of job "{job_id}"'))
            lost_ids = set(lost)
            renewed = [job.id for job in renewing if job.id not in lost_ids]
            if renewed:
                self._emit("locks_renewed", {"count": len(renewed), "job_ids": renewed})

    async def _stalled_checker(self) -> None:
        while not self._winding_down():
            try:
                moved = await scripts.arun(
                    self._aclient,
                    "move_stalled_jobs_to_wait",
                    [self.queue.keys.key("stalled-check")],
                    [
                        self.queue.keys.qualified,
                        self.max_stalled_count,
                        now_ms(),
                        self.stalled_interval,
                    ],
                )
                for job_id in moved:
                    logger.info(
                        "job %s of queue %s stalled: moved back to wait",
                        job_id,
                        self.queue.name,
                    )
                    self._emit("stalled", job_id)
            except redis.RedisError as error:
                self._emit("error", await self._described(error))
            if self._winding_down():
                return
            await asyncio.sleep(self.stalled_interval / 1000)


def _task_cancelled() -> bool:
    """Whether the running task was cancelled with the CancelledError lost on the way:
    redis-py 6.0 can swallow one that meets its read timeout (seen on Python 3.11), and
    a loop that carried on would sleep through the close."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def _retry_delay_after(delay: float) -> float:
    """The wait before the next retry of a refused record or scheduler run: doubled,
    up to REFUSED_RECORD_RETRY_MAX_S."""
    return min(delay * 2, REFUSED_RECORD_RETRY_MAX_S)


_EAGER_TASKS = sys.version_info >= (3, 12)
# Up to this concurrency a worker with a synchronous processor runs direct lanes (see
# Worker._run_direct_lane); above it the event loop batches the records of its threads.
# Engine Worker, def processor, alternated on one Redis (session 23, lanes taking jobs
# ahead): at concurrency 8 lanes 1.35x the loop with no-op jobs and 1.75x with 0.3 ms
# ones; at 12 and 16 the loop is ahead with no-op jobs (about 1.2x), at 50 by 1.8x
# (each lane a round trip a job, where the loop sends one batch for many).
DIRECT_LANES_UP_TO = 8
# A lane takes a job ahead (it runs while the record of the job before is under way)
# after a job that ran for less than this, and gives it back to the queue once the job
# in front of it has run this long.
FETCH_AHEAD_UNDER_S = 0.05
FETCH_AHEAD_GIVE_BACK_S = 0.5
# A job hash holds at least one of these (a bare id in a list holds none).
_JOB_HASH_FIELDS = frozenset(("name", "data", "timestamp"))
# How long pause() waits for the fetches in flight to answer.
PAUSE_WAIT_S = 5.0
# How long close(force=True) waits for the worker's thread when given no timeout.
FORCED_CLOSE_WAIT_S = 10.0


def _eager_task(loop: asyncio.AbstractEventLoop, coro: Any, **options: Any) -> asyncio.Task:
    """asyncio.eager_task_factory, written out because uvloop passes `eager_start`
    itself (as None), which the stock factory then receives twice."""
    options["eager_start"] = True
    return asyncio.Task(coro, loop=loop, **options)


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop when installed (a requirement; optional for the engine alone): its socket
    round trips cost about half of the standard loop's, and round trips are what a
    worker spends its time on. FLOWJOBS_EVENT_LOOP=asyncio forces the standard loop."""
    if os.environ.get("FLOWJOBS_EVENT_LOOP", "").lower() == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def _outcome_of(error: BaseException) -> tuple[str, Any]:
    """The outcome of a job whose processing raised `error`, and its value."""
    if isinstance(error, MOVED_BY_PROCESSOR):
        return "moved", None
    if isinstance(error, RateLimitError):
        return "rate-limited", error
    return "failed", error


def _cancelled_instead(job: Job, error: BaseException) -> BaseException:
    """A processor that raised after its job was cancelled failed because of the cancel
    (what it raised becomes the cause); the job's moves and rate limits stand."""
    if job.cancel_reason is None or isinstance(
        error, (JobCancelled, *MOVED_BY_PROCESSOR, RateLimitError)
    ):
        return error
    cancelled = job.cancelled_error()
    cancelled.__cause__ = error
    return cancelled


def _processor_args(job: Job, pass_token: bool, pass_signal: bool) -> tuple[Any, ...]:
    if pass_signal:
        return (job, job.token, cancellation.CancellationSignal(job))
    return (job, job.token) if pass_token else (job,)


def _wants_signal(processor: Processor | None) -> bool:
    """A third positional parameter receives the cancellation signal (Node passes its
    AbortSignal to processors declaring three parameters)."""
    return _positional_parameters(processor)[0] >= 3


def _wants_token(processor: Processor | None) -> bool:
    count, var_positional = _positional_parameters(processor)
    return count >= 2 or var_positional


def _positional_parameters(processor: Processor | None) -> tuple[int, bool]:
    """(how many named positional parameters, whether it takes *args)."""
    if processor is None:
        return 0, False
    try:
        parameters = inspect.signature(processor).parameters.values()
    except (TypeError, ValueError):
        return 0, False
    positional = [p for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(positional), any(p.kind == p.VAR_POSITIONAL for p in parameters)
