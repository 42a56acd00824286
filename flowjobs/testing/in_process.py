"""``run_jobs()``: the registered processors run the queued jobs in the test's own thread.

Real engine Workers (one per queue, each on its own thread and event loop, as in
``runworker``) take the jobs, hold and renew their locks and record every outcome with
the engine's scripts: retries, backoff, flows, failed children, rate limits and the
events stream behave as in production. Only the processor call is handed over to the
thread that called ``run_jobs()``, so a processor sees what the test sees: the same
database connection, inside the test's transaction (Django's ``TestCase``, pytest-django's
``db``), on SQLite as on PostgreSQL. The ``job_started`` / ``job_completed`` /
``job_failed`` signals are sent in that thread too, and the on-commit callbacks a
processor registers run when it returns (the test's transaction never commits).

``run_jobs()`` returns once no job of the queues can run: nothing waiting, prioritized,
active or delayed and due in any of them, read in one MULTI so that a parent released by
its last child into another queue is seen. With ``run_delayed=True`` delayed jobs (and
retries waiting out their backoff) are promoted and run at once.
"""

from __future__ import annotations

import contextlib
import logging
import queue as queue_module
import threading
import time
import traceback
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from .. import conf, registry, signals
from ..engine import FlowJobsError, Job, RateLimitError, Worker
from ..engine.options import now_ms
from ..engine.worker import MOVED_BY_PROCESSOR

__all__ = ["Attempt", "JobsRun", "JobsStillRunning", "NoProcessorForQueue", "run_jobs"]

logger = logging.getLogger("flowjobs.testing")

DEFAULT_TIMEOUT_S = 10.0
PUMP_INTERVAL_S = 0.01
CLOSE_TIMEOUT_S = 10.0


class NoProcessorForQueue(FlowJobsError, ValueError):
    """``run_jobs()`` was asked for a queue that has no registered ``@processor``."""


class JobsStillRunning(FlowJobsError, TimeoutError):
    """The queues were not idle when ``run_jobs()``'s time limit passed; ``.run`` holds
    what ran until then."""

    def __init__(self, message: str, run: JobsRun) -> None:
        super().__init__(message)
        self.run = run


@dataclass
class Attempt:
    """One run of a job's processor, and what the engine recorded for it.

    ``outcome``: ``completed``; ``failed`` (for good: no attempts left, or unrecoverable);
    ``retried`` (failed, the job goes round again); ``moved`` (the processor moved the job
    itself: DelayedError, WaitingChildrenError, WaitingError); ``rate-limited``;
    ``unrecorded`` (the engine could not record it, or the run stopped first). A job the
    engine failed without running its processor (a parent failed by its child, data that
    is not JSON) is an attempt too, with the engine's ``error``.
    """

    queue: str
    job_id: str
    name: str
    data: Any
    number: int  # 1 for the first attempt of the job, 2 for its first retry, ...
    outcome: str = "unrecorded"
    result: Any = None
    error: BaseException | None = None
    traceback: str = ""

    def __str__(self) -> str:
        text = f"{self.queue}/{self.name} #{self.job_id} attempt {self.number}: {self.outcome}"
        if self.error is not None:
            text += f" ({type(self.error).__name__}: {self.error})"
        return text


@dataclass
class JobsRun:
    """What ``run_jobs()`` ran, in the order the processors ran."""

    queues: list[str]
    ran: list[Attempt] = field(default_factory=list)
    left: dict[str, dict[str, int]] = field(default_factory=dict)

    def _with(self, outcome: str) -> list[Attempt]:
        return [attempt for attempt in self.ran if attempt.outcome == outcome]

    @property
    def completed(self) -> list[Attempt]:
        return self._with("completed")

    @property
    def failed(self) -> list[Attempt]:
        """Attempts that failed their job for good (each with its ``traceback``)."""
        return self._with("failed")

    @property
    def retried(self) -> list[Attempt]:
        return self._with("retried")

    def attempts_of(self, job_id: str) -> list[Attempt]:
        return [attempt for attempt in self.ran if attempt.job_id == job_id]

    def results(self, name: str | None = None) -> list[Any]:
        """Return values of the completed attempts (of job ``name`` only, when given)."""
        return [a.result for a in self.completed if name is None or a.name == name]

    def __str__(self) -> str:
        lines = [f"ran {len(self.ran)} attempt(s) in {', '.join(self.queues)}"]
        lines += [f"  {attempt}" for attempt in self.ran]
        for attempt in self.ran:
            if attempt.outcome in ("failed", "retried") and attempt.traceback:
                lines += [f"--- {attempt}", attempt.traceback.rstrip()]
        left = {q: counts for q, counts in self.left.items() if any(counts.values())}
        if left:
            lines.append(f"left: {left}")
        return "\n".join(lines)


def _on_commit_marks() -> dict[str, int]:
    from django.db import connections

    return {c.alias: len(c.run_on_commit) for c in connections.all(initialized_only=True)}


def _run_on_commit_callbacks(marks: dict[str, int]) -> None:
    """Runs the on-commit callbacks a processor registered (and takes them off the list).

    In production a processor runs in autocommit mode: ``on_commit`` work runs when its
    atomic block commits, or at once outside one. Here it runs inside the test's
    transaction, which never commits, so the kit plays the commit's part when the
    processor returns. Callbacks of a block that rolled back are gone already (Django
    drops them with the savepoint)."""
    from django.db import connections

    for connection in connections.all(initialized_only=True):
        start = marks.get(connection.alias, 0)
        while len(connection.run_on_commit) > start:
            _savepoints, callback, robust = connection.run_on_commit.pop(start)
            if not robust:
                callback()
                continue
            try:
                callback()
            except Exception:
                logger.exception("a robust on-commit callback of a processor raised")


def _queue_names(queues: Iterable[str] | str | None) -> list[str]:
    registered = registry.queue_names()
    if queues is None:
        return registered
    if isinstance(queues, str):
        queues = [queues]
    names = list(dict.fromkeys(queues))
    missing = [name for name in names if name not in registered]
    if missing:
        raise NoProcessorForQueue(
            f"run_jobs(): no @processor is registered for queue(s) {', '.join(missing)} "
            f"(registered: {', '.join(registered) or 'none'}); define one in an installed "
            "app's jobs.py"
        )
    return names


def run_jobs(
    queues: Iterable[str] | str | None = None,
    *,
    timeout: float = DEFAULT_TIMEOUT_S,
    run_delayed: bool = False,
) -> JobsRun:
    """Runs the jobs of ``queues`` (default: every queue with a registered processor)
    with their registered processors, in this thread, until none can run; returns what
    ran. Raises ``JobsStillRunning`` when that takes longer than ``timeout`` seconds
    (checked between jobs: a running processor is not interrupted) and
    ``NoProcessorForQueue`` for a queue nobody processes.

    ``run_delayed``: delayed jobs, and retries waiting out their backoff, run at once
    instead of being left for later.
    """
    if timeout <= 0:
        raise ValueError(
            f"run_jobs(): timeout must be a positive number of seconds, got {timeout!r}"
        )
    session = _Session(_queue_names(queues), run_delayed)
    return session.run(timeout)


class _Session:
    """One ``run_jobs()`` call: workers in their threads, processors in the caller's."""

    def __init__(self, queues: list[str], run_delayed: bool) -> None:
        self.result = JobsRun(queues)
        self.run_delayed = run_delayed
        self.settings = conf.settings()
        self.calls: queue_module.SimpleQueue[Callable[[], None]] = queue_module.SimpleQueue()
        self.attempts: dict[str, Attempt] = {}  # by lock token
        self.waiting: set[Future[Any]] = set()
        self.stopping = False
        self.workers: list[Worker] = []
        self.queues = [conf.get_queue(name) for name in queues]

    # ------------------------------------------------------------------ caller's thread
    def run(self, timeout: float) -> JobsRun:
        deadline = time.monotonic() + timeout
        try:
            for name in self.result.queues:
                self.workers.append(self._start_worker(name))
            while True:
                # the deadline is checked between jobs too: a queue that never empties
                # keeps the pump busy, and was only timed out once the pump waited
                if self._pump() and time.monotonic() < deadline:
                    continue
                if self._idle():
                    break
                if time.monotonic() >= deadline:
                    self._stop()
                    raise JobsStillRunning(
                        f"run_jobs(): queue(s) {', '.join(self.result.queues)} still had "
                        f"jobs to run after {timeout}s: {self._describe_left()}\n{self.result}",
                        self.result,
                    )
        except BaseException:
            self._stop()
            raise
        self._stop()
        return self.result

    def _pump(self) -> bool:
        """Runs what the worker threads handed over; False when nothing came in time."""
        try:
            call = self.calls.get(timeout=PUMP_INTERVAL_S)
        except queue_module.Empty:
            return False
        call()
        return True

    def _stop(self) -> None:
        """Closes the workers while still running what they hand over (a worker closes
        only once its active job is done, and that job runs here)."""
        if self.stopping:
            return
        self.stopping = True
        for future in list(self.waiting):
            # a processor call nobody will run any more: its job fails with this reason
            self._cancel_waiting(future)
        closers = [
            threading.Thread(target=worker.close, kwargs={"timeout": CLOSE_TIMEOUT_S}, daemon=True)
            for worker in self.workers
        ]
        for closer in closers:
            closer.start()
        while any(closer.is_alive() for closer in closers):
            self._pump()
        while self._pump():
            pass
        self.result.left = self._counts()

    # ------------------------------------------------------------------ idle or not
    def _counts(self) -> dict[str, dict[str, int]]:
        """Jobs per state of every queue, read in one MULTI (a consistent snapshot)."""
        client = self.queues[0].client
        pipe = client.pipeline(transaction=True)
        due = (now_ms() + 1) * 0x1000 - 1  # delayed scores: timestamp * 0x1000 + counter
        for queue in self.queues:
            keys = queue.keys
            pipe.hexists(keys.meta, "paused")
            pipe.llen(keys.key("wait"))
            pipe.zcard(keys.key("prioritized"))
            pipe.llen(keys.key("active"))
            pipe.zcount(keys.key("delayed"), 0, due)
            pipe.zcard(keys.key("delayed"))
            pipe.zcard(keys.key("waiting-children"))
        replies = pipe.execute()
        counts = {}
        for index, queue in enumerate(self.queues):
            paused, wait, prioritized, active, due_now, delayed, children = replies[
                index * 7 : index * 7 + 7
            ]
            counts[queue.name] = {
                "paused": int(bool(paused)),
                "waiting": wait + prioritized,
                "active": active,
                "due": due_now,
                "delayed": delayed,
                "waiting-children": children,
            }
        return counts

    def _idle(self) -> bool:
        counts = self._counts()
        if any(c["active"] for c in counts.values()):
            return False
        runnable = [c for c in counts.values() if not c["paused"]]
        if any(c["waiting"] or c["due"] for c in runnable):
            return False
        if self.run_delayed:
            delayed = [
                q for q in self.queues if not counts[q.name]["paused"] and counts[q.name]["delayed"]
            ]
            for queue in delayed:
                queue.promote_jobs()
            return not delayed
        return True

    def _describe_left(self) -> str:
        counts = self._counts()
        return (
            "; ".join(
                f"{name}: "
                + ", ".join(f"{state} {n}" for state, n in c.items() if n and state != "paused")
                for name, c in counts.items()
                if any(n for state, n in c.items() if state != "paused")
            )
            or "nothing left (a job was still being recorded)"
        )

    # ------------------------------------------------------------------ worker threads
    def _start_worker(self, name: str) -> Worker:
        queue_settings = self.settings.queue(name)
        dispatcher = registry.get_dispatcher(name)
        worker = Worker(
            name,
            self._processor(dispatcher),
            connection=self.settings.REDIS_URL,
            prefix=self.settings.PREFIX,
            concurrency=1,  # the caller's thread runs one processor at a time anyway
            lock_duration=queue_settings.lock_duration,
            stalled_interval=queue_settings.stalled_interval,
            max_stalled_count=queue_settings.max_stalled_count,
            limiter=dict(queue_settings.limiter) if queue_settings.limiter else None,
            drain_delay=1.0,
            autorun=False,
            name="flowjobs-test",
        )
        signals.connect_worker(worker, send=self._send_signal_here)
        worker.on("completed", self._on_completed)
        worker.on("failed", self._on_failed)
        worker.start()
        return worker

    def _processor(self, dispatcher: registry.Dispatcher) -> Callable[[Job, str], Any]:
        def hand_over(job: Job, token: str) -> Any:
            # runs in the worker's thread pool: waits while the caller's thread runs the job
            future: Future[Any] = Future()
            self.waiting.add(future)
            self.calls.put(lambda: self._run_here(dispatcher, job, token, future))
            if self.stopping:
                self._cancel_waiting(future)
            try:
                return future.result()
            finally:
                self.waiting.discard(future)

        return hand_over

    def _cancel_waiting(self, future: Future[Any]) -> None:
        with contextlib.suppress(Exception):
            future.set_exception(
                JobsStillRunning("run_jobs() stopped before this job ran", self.result)
            )

    def _run_here(
        self, dispatcher: registry.Dispatcher, job: Job, token: str, future: Future[Any]
    ) -> None:
        if future.done():
            return  # given up on while queued (run_jobs stopping)
        attempt = Attempt(dispatcher.queue, job.id, job.name, job.data, job.attempts_made + 1)
        self.attempts[token] = attempt
        self.result.ran.append(attempt)
        marks = _on_commit_marks()
        try:
            try:
                attempt.result = dispatcher.call_here(job, token)
            finally:
                _run_on_commit_callbacks(marks)
        except BaseException as error:
            attempt.error = error
            attempt.traceback = "".join(traceback.format_exception(error))
            if isinstance(error, MOVED_BY_PROCESSOR):
                attempt.outcome = "moved"
            elif isinstance(error, RateLimitError):
                attempt.outcome = "rate-limited"
            future.set_exception(error)
            if not isinstance(error, Exception):
                raise  # KeyboardInterrupt and the like stop the test
            return
        future.set_result(attempt.result)

    def _send_signal_here(self, signal: Any, sender: str, **kwargs: Any) -> None:
        self.calls.put(lambda: signals.send_now(signal, sender, **kwargs))

    def _on_completed(self, job: Job, result: Any) -> None:
        self.calls.put(lambda: self._record(job, "completed"))

    def _on_failed(self, job: Job, error: BaseException) -> None:
        self.calls.put(lambda: self._record(job, "failed", error))

    def _record(self, job: Job, outcome: str, error: BaseException | None = None) -> None:
        attempt = self.attempts.get(job.token or "")
        if attempt is None:
            # failed before any processor ran (data that is not JSON, no job hash, ...)
            attempt = Attempt(job.queue.name, job.id, job.name, job.data, job.attempts_made + 1)
            attempt.error = error
            if error is not None:
                attempt.traceback = "".join(traceback.format_exception(error))
            self.result.ran.append(attempt)
        if outcome == "failed":
            # Read before the job's next attempt can run: that needs this thread.
            state = job.queue.get_job_state(job.id)
            outcome = "failed" if state in ("failed", "unknown") else "retried"
        attempt.outcome = outcome
