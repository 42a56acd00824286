"""Worker: takes jobs from a queue, runs the processor, and records the outcome.

The worker runs an asyncio loop (in a background thread with autorun=True, or
in the caller's thread with `run()`). Round trips are what limit a Python
worker, so it batches them while keeping BullMQ's per-job semantics:
- one move_to_active call takes as many jobs as there are free slots, each
  locked with its own token;
- finished jobs are recorded together in one pipeline (one script call per job,
  each atomic), followed by a fetch for the slots they freed;
- the locks of all active jobs are renewed in one script call.
An idle worker blocks on the queue's marker (BZPOPMIN), it does not poll.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import inspect
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import redis
import redis.asyncio

from . import cancellation, groups, joblog, loopwatch, schedulers, scripts, telemetry
from .backoff import BackoffStrategy
from .connection import Connection, async_client, describe, eviction_warning, is_cluster
from .errors import (
    DelayedError,
    FlowJobsError,
    InvalidJobData,
    JobCancelled,
    RateLimitError,
    UnrecoverableError,
    WaitingChildrenError,
    WaitingError,
    error_for_code,
)
from .finishing import (
    FetchSettings,
    completed_value,
    error_message,
    failure_call,
    finish_call,
    keep_jobs,
    plan_failure,
)
from .isolation import ProcessorTimedOut, ProcessPool, processor_path, resolve_processor
from .job import Job
from .options import now_ms
from .queue import Queue
from .threadpool import ThreadPool

logger = logging.getLogger("flowjobs.worker")

Processor = Callable[..., Any]
MOVED_BY_PROCESSOR = (DelayedError, WaitingChildrenError, WaitingError)
MAXIMUM_RATE_LIMIT_DELAY_MS = 30_000
CONNECTION_RETRY_MAX_S = 10.0


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
    ) -> None:
        if isolation not in ("thread", "process"):
            raise FlowJobsError(f'isolation must be "thread" or "process", got {isolation!r}')
        processor, self.processor_path = resolve_processor(processor)
        if isolation == "process" and processor is not None and self.processor_path is None:
            processor_path(processor)  # raises: explains what a child process can import
        if not isinstance(concurrency, int) or concurrency < 1:
            raise FlowJobsError(f"concurrency must be a positive integer, got {concurrency!r}")
        if limiter is not None and (
            not isinstance(limiter, dict)
            or not isinstance(limiter.get("max"), int)
            or not isinstance(limiter.get("duration"), int)
        ):
            raise FlowJobsError(f'limiter must be {{"max": int, "duration": ms}}, got {limiter!r}')
        self.queue = Queue(queue_name, connection, prefix)
        self.name = name
        self.processor = processor
        self.concurrency = concurrency
        self.lock_duration = int(lock_duration)
        self.lock_renew_time = int(lock_renew_time or lock_duration / 2)
        self.stalled_interval = int(stalled_interval)
        self.max_stalled_count = int(max_stalled_count)
        self.drain_delay = float(drain_delay)
        self.backoff_strategies = dict(backoff_strategies or {})
        self.remove_on_complete = remove_on_complete
        self.remove_on_fail = remove_on_fail
        self.metrics_max_data_points = metrics_max_data_points
        self.skip_stalled_check = skip_stalled_check
        self.skip_lock_renewal = skip_lock_renewal
        self.isolation = isolation
        self.job_timeout_ms = job_timeout_ms
        self.group_limits = {
            "concurrency": group_concurrency,
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
        self._token_counter = 0
        self._listeners: dict[str, list[Callable[..., Any]]] = {}
        self._pass_token = _wants_token(processor)
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
        self._thread: threading.Thread | None = None
        self._stopped = threading.Event()
        self._started = threading.Event()
        self._closing = False
        self._force = False
        self._paused = False
        self._active: dict[str, Job] = {}
        self._reserved = 0
        self._finished: list[tuple[Job, str, Any]] = []
        self._recording = 0
        self._batch_size = max(1, concurrency // 2)
        self._lanes: list[Any] = []
        self._free_lanes: list[Any] = []
        self._limit_until = 0.0
        self._processed_since_drained = False
        self._fatal: BaseException | None = None
        self._outage_since: float | None = None
        self.jobs_processed = 0
        if autorun and processor is not None:
            self.start()

    # --- public control ------------------------------------------------------------------
    def on(self, event: str, listener: Callable[..., Any]) -> Worker:
        """Local events: active(job), completed(job, result), failed(job, error),
        error(exception), stalled(job_id), drained(), closed()."""
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
            asyncio.run(self._main(), loop_factory=_loop_factory())
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
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)
            if self._thread.is_alive() and not force:
                self.close(force=True, timeout=5)
        elif self._thread is None and loop is not None:
            self._stopped.wait(timeout)

    def pause(self) -> None:
        """Stops this worker (only) from taking new jobs."""
        self._paused = True

    def resume(self) -> None:
        self._paused = False
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._wake.set)

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
        self._token_counter += 1
        return f"{self._token_base}:{self._token_counter}"

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
        return self.concurrency - len(self._active) - self._reserved

    def _can_fetch(self) -> bool:
        return not (self._closing or self._paused) and time.monotonic() >= self._limit_until

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        # A processor runs at once, up to its first real wait: quick jobs cost no
        # scheduling round of the event loop.
        self._loop.set_task_factory(_eager_task)
        self._wake = asyncio.Event()
        self._blocking_task: asyncio.Task | None = None
        self._aclient = async_client(self._connection)
        # redis-py's default socket timeout (5 s) would cut the blocking wait on the marker
        self._blocking_client = async_client(
            self._connection, single_connection_client=True, socket_timeout=None
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
            if is_cluster(self._aclient):
                self._lanes = [scripts.ClusterLane(self._aclient) for _ in range(2)]
            else:
                pool = self._aclient.connection_pool
                self._lanes = [scripts.Lane(await pool.get_connection()) for _ in range(2)]
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
                return
            except redis.AuthenticationError:
                raise  # wrong credentials do not fix themselves: stop with the error
            except (redis.ConnectionError, redis.TimeoutError, OSError) as error:
                if self._closing:
                    raise
                logger.warning(
                    "cannot reach Redis at %s (%s); retrying in %.1fs",
                    describe(self._connection),
                    error,
                    delay,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, CONNECTION_RETRY_MAX_S)

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

    def _cancel_blocking(self) -> None:
        if self._blocking_task is not None:
            self._blocking_task.cancel()

    async def _fetcher(self) -> None:
        retry_delay = 0.1
        while not self._closing:
            if not self._can_fetch() or self._free_slots() <= 0:
                await self._wait_wake(
                    self._limit_until - time.monotonic()
                    if self._limit_until > time.monotonic()
                    else None
                )
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
                if self._outage_since is not None:
                    logger.warning(
                        "Redis at %s is back after %.1fs",
                        describe(self._connection),
                        time.monotonic() - self._outage_since,
                    )
                    self._outage_since = None
            except (redis.ConnectionError, redis.TimeoutError, OSError) as error:
                self._reserved -= count
                await self._connection_lost(error, retry_delay)
                retry_delay = min(retry_delay * 2, CONNECTION_RETRY_MAX_S)
                continue
            except redis.ResponseError as error:
                # a script error must not stop the worker (and with it the queue)
                self._reserved -= count
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

    async def _connection_lost(self, error: BaseException, delay: float) -> None:
        if self._outage_since is None:
            self._outage_since = time.monotonic()
        logger.warning(
            "lost Redis at %s (%s); reconnecting in %.1fs",
            describe(self._connection),
            error,
            delay,
        )
        self._emit("error", error)
        await self._wait_wake(delay)

    def _rate_limited(self, delay_ms: int) -> None:
        self._limit_until = time.monotonic() + min(delay_ms, MAXIMUM_RATE_LIMIT_DELAY_MS) / 1000

    async def _wait_wake(self, timeout: float | None) -> None:
        self._wake.clear()
        if timeout is None:
            await self._wake.wait()
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout)

    async def _wait_for_marker(self, delay_until: int) -> None:
        timeout = self.drain_delay
        if delay_until:
            timeout = min(max((delay_until - now_ms()) / 1000, 0.001), 10.0)
        self._blocking_task = asyncio.ensure_future(
            self._blocking_client.bzpopmin(self.queue.keys.marker, timeout)
        )
        try:
            await self._blocking_task
        except asyncio.CancelledError:
            if self._closing:
                return
            # cancelled because slots freed up: the connection was reset, make a new one
        except (redis.ConnectionError, redis.TimeoutError, OSError) as error:
            await self._connection_lost(error, 1.0)
        finally:
            self._blocking_task = None

    def _start_jobs(self, jobs: list[Job]) -> None:
        for job in jobs:
            self._active[job.id] = job
            self._loop.create_task(self._process(job))

    async def _process(self, job: Job) -> None:
        self._emit("active", job)
        joblog.started(job, self.queue.name)
        try:
            if job.repeat_job_key:
                await self._advance_scheduler(job)
            if job.deferred_failure:
                raise UnrecoverableError(job.deferred_failure)
            if job.data_error:
                raise UnrecoverableError(
                    f'job "{job.id}" of queue "{self.queue.name}" has data that is not valid '
                    f"JSON ({job.data_error})"
                )
            if job.opts_error:
                raise UnrecoverableError(
                    f'job "{job.id}" of queue "{self.queue.name}" has options that are not a '
                    f"valid JSON object ({job.opts_error})"
                )
            if not {"name", "data", "timestamp"} & job.raw.keys():
                raise UnrecoverableError(
                    f'job "{job.id}" of queue "{self.queue.name}" has no job hash: its id was '
                    "queued without the job (removed, or pushed by a foreign producer)"
                )
            result = await self._run_processor(job)
            outcome, value = "completed", result
        except MOVED_BY_PROCESSOR:
            outcome, value = "moved", None
        except RateLimitError as error:
            outcome, value = "rate-limited", error
        except asyncio.CancelledError:
            self._active.pop(job.id, None)
            raise
        except BaseException as error:  # noqa: BLE001 - a processor may raise anything
            outcome, value = "failed", error
        self._finished.append((job, outcome, value))
        self._schedule_records()

    async def _run_processor(self, job: Job) -> Any:
        """Runs the processor (in a child process, on the loop or in a thread), under the
        job's timeout and in its telemetry span; a cancelled job fails as JobCancelled."""
        timeout = job.opts.get("timeout") or self.job_timeout_ms
        try:
            with telemetry.process_span(job, self.queue.name):
                if self._pool is not None:
                    return await self._pool.run(job, timeout, self._executor)  # type: ignore[arg-type]
                args = (job, job.token) if self._pass_token else (job,)
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
        except (*MOVED_BY_PROCESSOR, RateLimitError):
            raise
        except BaseException as error:
            if job.cancel_reason is not None and not isinstance(error, JobCancelled):
                raise job.cancelled_error() from error
            raise

    def _cancel(self, job: Job, reason: str) -> None:
        """A cancel request reached the job this worker runs: flag it, and interrupt an
        async processor (a child process is killed by the pool, which watches the flag)."""
        if job.cancel_reason is not None:
            return
        logger.info("job %s of queue %s: cancelled (%s)", job.id, self.queue.name, reason)
        job.mark_cancelled(reason)
        task = getattr(job, "_task", None)
        if task is not None and not task.done():
            task.cancel()

    def _cancel_request(self, job_id: str, token: str | None, reason: str) -> None:
        job = self._active.get(job_id)
        if job is not None and job.token == token:
            self._cancel(job, reason)

    async def _subscribe_cancels(self) -> Any:
        pubsub = self._aclient.pubsub(ignore_subscribe_messages=True)
        await pubsub.subscribe(cancellation.channel(self.queue.keys))
        return pubsub

    async def _cancel_listener(self, pubsub: Any) -> None:
        """Receives cancel requests (queue.cancel_job) as they are published; lock renewal
        reads them from the job hashes too, in case a message was missed."""
        delay = 0.1
        while True:
            try:
                if pubsub is None:
                    pubsub = await self._subscribe_cancels()
                    delay = 0.1
                async for message in pubsub.listen():
                    request = cancellation.parse(message.get("data"))
                    if request is not None:
                        self._cancel_request(*request)
            except (redis.ConnectionError, redis.TimeoutError, OSError):
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
            logger.warning("job %s: could not schedule the next run: %s", job.id, error)
            self._emit("error", error)

    def _schedule_records(self) -> None:
        """Records finished jobs: up to two half-size batches in flight, each on its own
        connection, so Redis runs one batch while this process handles the other's jobs."""
        while self._finished and self._free_lanes:
            lane = self._free_lanes.pop()
            batch = self._finished[: self._batch_size]
            del self._finished[: self._batch_size]
            self._recording += 1
            asyncio.ensure_future(self._record(lane, batch))

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
            self._schedule_records()

    async def _record_batch(self, lane: Any, batch: list[tuple[Job, str, Any]]) -> None:
        calls: list[scripts.Call] = []
        plans: list[tuple[Job, str, Any, int]] = []
        for job, outcome, value in batch:
            self._active.pop(job.id, None)
            call = self._outcome_call(job, outcome, value)
            if call is None:
                joblog.recorded(job, self.queue.name, outcome, value)
            else:
                calls.append(call[0])
                plans.append((job, *call[1:]))
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
            if calls and calls[-1][0] == "move_to_finished":
                # fetch-next inside the last finish: one script call less per batch
                calls[-1] = (calls[-1][0], calls[-1][1], [*calls[-1][2], *fetch_tokens])
            else:
                calls.append(
                    ("move_to_active", [self.queue.keys.meta], self._fetch_args(fetch_tokens))
                )
        delay = 0.1
        while True:
            try:
                results = await scripts.run_on_lane(lane, calls) if calls else []
                break
            except (redis.ConnectionError, redis.TimeoutError, OSError) as error:
                # a finish not recorded is retried: worst case Redis already has it and
                # answers "not active", which is logged below
                await self._connection_lost(error, delay)
                delay = min(delay * 2, CONNECTION_RETRY_MAX_S)
        self._reserved -= len(fetch_tokens)
        for (job, outcome, value, retry_delay_ms), result in zip(plans, results, strict=False):
            if self._after_record(job, outcome, value, result):
                joblog.recorded(job, self.queue.name, outcome, value, retry_delay_ms)
        self._processed_since_drained = True
        if fetch_tokens:
            result = results[-1]
            if result == 0:
                pass  # the last finish fetched nothing: the queue is empty
            elif isinstance(result, list):
                fetched, rate_delay, _ = result
                if fetched:
                    self._start_jobs(self._jobs_from(fetched, fetch_tokens))
                elif rate_delay > 0:
                    self._rate_limited(rate_delay)
            elif isinstance(result, BaseException):
                self._emit("error", result)
        if self._free_slots() > 0:
            # slots this batch could not fill: the fetcher decides what to wait for
            self._wake.set()

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

    def _after_record(self, job: Job, outcome: str, value: Any, result: Any) -> bool:
        """Emits the local event of a recorded outcome; False when Redis refused it."""
        if isinstance(result, BaseException) or (isinstance(result, int) and result < 0):
            error = (
                result
                if isinstance(result, BaseException)
                else error_for_code(result, job.id, self.queue.name, f"record {outcome}")
            )
            logger.warning("could not record %s of job %s: %s", outcome, job.id, error)
            self._emit("error", error)
            return False
        self.jobs_processed += 1
        if outcome == "completed":
            self._emit("completed", job, value)
        elif outcome == "rate-limited":
            if isinstance(result, int) and result > 0:
                self._rate_limited(result)
        else:
            job.failed_reason = error_message(value)
            self._emit("failed", job, value)
        return True

    async def _drain_active(self) -> None:
        """Graceful close: wait for running jobs and record them."""
        while (self._active or self._finished or self._recording) and not self._force:
            self._schedule_records()
            await asyncio.sleep(0.005)

    async def _lock_renewer(self) -> None:
        while True:
            await asyncio.sleep(self.lock_renew_time / 1000)
            if not self._active:
                continue
            args: list[Any] = [self.queue.keys.qualified, self.lock_duration]
            for job in list(self._active.values()):
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
                self._emit("error", error)
                continue
            for job_id in lost:
                logger.warning("lost the lock of job %s in queue %s", job_id, self.queue.name)
                self._emit("error", FlowJobsError(f'lost the lock of job "{job_id}"'))

    async def _stalled_checker(self) -> None:
        while True:
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
                self._emit("error", error)
            await asyncio.sleep(self.stalled_interval / 1000)


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


def _wants_token(processor: Processor | None) -> bool:
    if processor is None:
        return False
    try:
        parameters = inspect.signature(processor).parameters.values()
    except (TypeError, ValueError):
        return False
    positional = [p for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(positional) >= 2 or any(p.kind == p.VAR_POSITIONAL for p in parameters)
