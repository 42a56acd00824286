"""``FlowJobsBackend``: Django's Tasks framework (``django.tasks``) on flowjobs queues.

Enqueueing adds one job (see ``results`` for its shape) to the queue named by the
task's ``queue_name``; ``get_result`` reads the job back from whichever of the
backend's ``QUEUES`` holds it. Workers run the jobs through ``execution``.
"""

from __future__ import annotations

import logging
import math
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from datetime import datetime
from typing import Any

from asgiref.sync import sync_to_async
from django.core import checks
from django.db import transaction
from django.tasks.backends.base import BaseTaskBackend
from django.tasks.base import Task, TaskResult, TaskResultStatus
from django.tasks.base import task as django_task
from django.tasks.exceptions import InvalidTask, TaskResultDoesNotExist
from django.tasks.signals import task_enqueued
from django.utils.module_loading import import_string

from .. import conf, outbox
from ..engine import FlowJobsError, Job, Queue
from ..engine.options import EncodedJob, now_ms
from ..outbox_entry import OutboxKind
from . import execution
from .results import (
    STATUS_BY_STATE,
    from_bullmq_priority,
    from_ms,
    plain_json,
    plain_result,
    result_from_job,
    to_bullmq_priority,
    to_ms,
)

__all__ = ["FlowJobsBackend", "FlowJobsTask", "task"]

logger = logging.getLogger("flowjobs.tasks")

# Engine options a task's ``job_options`` may not set: the backend sets them, or a field
# of their own does (job_id, attempts, backoff, deduplication), or they make no sense
# for a task (flows, schedulers).
_RESERVED_JOB_OPTIONS = frozenset(
    {
        "job_id",
        "delay",
        "priority",
        "attempts",
        "backoff",
        "deduplication",
        "timestamp",
        "parent",
        "repeat",
        "prev_millis",
        "repeat_job_key",
        "telemetry",
    }
)
_OPTIONS = ("ENQUEUE_ON_COMMIT",)


@dataclass(frozen=True, slots=True, kw_only=True)
class FlowJobsTask(Task):
    """Django's ``Task`` plus flowjobs job options, given to ``flowjobs.tasks.task`` (see
    `task`), to Django 6.1's ``@task(...)`` (which passes extra keyword arguments on to the
    backend's task class) or to ``.using(...)``:

    - ``attempts``: how many times to run it before it is FAILED (default: the queue's
      default job options, else 1);
    - ``backoff``: ms between attempts, or ``{"type": "fixed"|"exponential", "delay": ms,
      "jitter": 0..1}``;
    - ``job_id``: the job id (and so the TaskResult id); enqueueing again while that job
      exists returns it instead of adding another;
    - ``deduplication``: ``{"id": ..., "ttl": ms, "extend": bool, "replace": bool}``:
      one job per id (the result of a duplicate is the existing job's);
    - ``enqueue_on_commit``: write the job through the transactional outbox: a row of
      the current database transaction, pushed to Redis after the commit (by the relay
      if Redis cannot take it then; nothing at all on rollback; the result's id is the
      requested id even when deduplication later keeps another job); None: the
      backend's OPTIONS, then FLOWJOBS;
    - ``job_options``: any other engine option (``remove_on_complete``,
      ``remove_on_fail``, ``keep_logs``, ``stacktrace_limit``, ``timeout``, ``group``).
    """

    attempts: int | None = None
    backoff: int | Mapping[str, Any] | None = field(default=None, hash=False)
    job_id: str | None = None
    deduplication: Mapping[str, Any] | None = field(default=None, hash=False)
    enqueue_on_commit: bool | None = None
    job_options: Mapping[str, Any] | None = field(default=None, hash=False)

    def using(
        self,
        *,
        priority: int | None = None,
        queue_name: str | None = None,
        run_after: Any = None,
        backend: str | None = None,
        **options: Any,
    ) -> FlowJobsTask:
        """Django's ``using()``, also taking the flowjobs options above (None: unchanged)."""
        task = Task.using(
            self, priority=priority, queue_name=queue_name, run_after=run_after, backend=backend
        )
        unknown = sorted(set(options) - _FLOWJOBS_FIELDS)
        if unknown:
            raise TypeError(
                f"{self.module_path}.using() got unknown option(s) {', '.join(unknown)}; "
                f"flowjobs options: {', '.join(sorted(_FLOWJOBS_FIELDS))}"
            )
        changes = {name: value for name, value in options.items() if value is not None}
        return replace(task, **changes) if changes else task


_FLOWJOBS_FIELDS = frozenset(f.name for f in fields(FlowJobsTask)) - frozenset(
    f.name for f in fields(Task)
)


def task(function: Any = None, **arguments: Any) -> Any:
    """Django's ``@task`` (``django.tasks.task``, the same arguments), also taking the
    flowjobs options of ``FlowJobsTask`` on every Django version: Django 6.1 passes extra
    keyword arguments on to the backend's task class, Django 6.0's ``@task`` refuses them.
    The options are set with ``using()`` on the task Django made."""
    options = {name: arguments.pop(name) for name in _FLOWJOBS_FIELDS & arguments.keys()}

    def wrapper(func: Any) -> Task:
        made = django_task(func, **arguments)
        if options and not isinstance(made, FlowJobsTask):
            raise TypeError(
                f"{made.module_path}: {', '.join(sorted(options))} are flowjobs options, "
                f"and task backend {made.backend!r} is not a FlowJobsBackend"
            )
        return made.using(**options) if options else made

    return wrapper(function) if function is not None else wrapper


_validation_queue: Queue | None = None


def _encode_check(task: Any, options: dict[str, Any]) -> None:
    """Lets the engine validate the job options (pure: nothing is written or connected)."""
    global _validation_queue
    if _validation_queue is None:
        # Port 9 (discard): the queue only encodes, it never connects.
        _validation_queue = Queue("task-validation", connection="redis://127.0.0.1:9/0")
    _validation_queue.encode(task.module_path, {"args": [], "kwargs": {}}, **options)


def _queue_problem(name: Any) -> str | None:
    if not isinstance(name, str) or not name:
        return f"queue names must be non-empty strings, got {name!r}"
    if ":" in name:
        return f"queue name {name!r} contains ':', which breaks the BullMQ key layout"
    return None


class RandomIds:
    """`uuid.uuid4().hex`, from a pool of `os.urandom` bytes: uuid4 makes a getrandom()
    system call for each id, 11 µs of a 300 µs `enqueue` here (between round trips a
    system call costs far more than in a tight loop). The bytes are the same kernel
    randomness; a forked child starts a pool of its own. The two bit settings below are
    what `uuid.UUID(bytes=..., version=4)` does, at a tenth of its 3.8 µs."""

    POOL_BYTES = 4096

    def __init__(self) -> None:
        self._reset()
        os.register_at_fork(after_in_child=self._reset)

    def _reset(self) -> None:
        self._lock = threading.Lock()  # (one a parent's thread held at the fork stays held)
        self._pool = b""
        self._at = 0

    def new(self) -> str:
        with self._lock:
            if self._at + 16 > len(self._pool):
                self._pool, self._at = os.urandom(self.POOL_BYTES), 0
            raw = bytearray(self._pool[self._at : self._at + 16])
            self._at += 16
        raw[6] = (raw[6] & 0x0F) | 0x40  # version 4
        raw[8] = (raw[8] & 0x3F) | 0x80  # the RFC 4122 variant
        return raw.hex()


TASK_IDS = RandomIds()


class FlowJobsBackend(BaseTaskBackend):
    """A ``TASKS`` backend that runs tasks as flowjobs jobs (see ``flowjobs.tasks``).

    ``QUEUES`` lists the flowjobs queues tasks may use (default ``["default"]``);
    ``OPTIONS`` may hold ``ENQUEUE_ON_COMMIT`` (default: the FLOWJOBS setting).
    """

    task_class = FlowJobsTask
    supports_defer = True
    supports_async_task = True
    supports_get_result = True
    supports_priority = True

    def __init__(self, alias: str, params: dict[str, Any]) -> None:
        super().__init__(alias, params)
        # Processors for these queues are registered at start-up (flowjobs/jobs.py); doing
        # it here too covers a TASKS setting changed later (tests). Conflicts are reported
        # by check(), not raised from here.
        execution.register_queues(
            [name for name in self.queues if not _queue_problem(name)], strict=False
        )

    # ------------------------------------------------------------------ validation
    def validate_task(self, task: Task) -> None:
        where = f"Task {task.module_path}"
        try:
            super().validate_task(task)
        except InvalidTask as error:
            # Django's messages do not say which task; ours do.
            raise InvalidTask(f"{where}: {error}") from None
        if not self.queues:
            raise InvalidTask(f"{where}: task backend {self.alias!r} lists no QUEUES.")
        problem = _queue_problem(task.queue_name)
        if problem:
            raise InvalidTask(f"{where}: {problem}.")
        if not isinstance(task, FlowJobsTask):
            return
        attempts = task.attempts
        if attempts is not None and (
            not isinstance(attempts, int) or isinstance(attempts, bool) or attempts < 1
        ):
            raise InvalidTask(f"{where}: attempts must be an integer >= 1, got {attempts!r}.")
        if task.enqueue_on_commit is not None and not isinstance(task.enqueue_on_commit, bool):
            raise InvalidTask(
                f"{where}: enqueue_on_commit must be True, False or None, "
                f"got {task.enqueue_on_commit!r}."
            )
        if task.job_options is not None:
            if not isinstance(task.job_options, Mapping):
                raise InvalidTask(f"{where}: job_options must be a dict, got {task.job_options!r}.")
            reserved = sorted(set(task.job_options) & _RESERVED_JOB_OPTIONS)
            if reserved:
                raise InvalidTask(
                    f"{where}: job_options may not set {', '.join(reserved)} "
                    "(set by the backend, or a task option of its own)."
                )
        if task.deduplication is not None and not isinstance(task.deduplication, Mapping):
            raise InvalidTask(
                f'{where}: deduplication must be a dict such as {{"id": "..."}}, '
                f"got {task.deduplication!r}."
            )
        options = self._job_options(task)
        if task.job_id is not None:
            options["job_id"] = task.job_id
        try:
            _encode_check(task, options)
        except FlowJobsError as error:
            raise InvalidTask(f"{where}: {error}") from None

    def _job_options(self, task: Task) -> dict[str, Any]:
        options: dict[str, Any] = {"priority": to_bullmq_priority(task.priority)}
        if isinstance(task, FlowJobsTask):
            options.update(conf.thaw(task.job_options or {}))
            if task.attempts is not None:
                options["attempts"] = task.attempts
            if task.backoff is not None:
                options["backoff"] = conf.thaw(task.backoff)
            if task.deduplication is not None:
                options["deduplication"] = conf.thaw(task.deduplication)
        return options

    def _on_commit(self, task: Task) -> bool:
        chosen = getattr(task, "enqueue_on_commit", None)
        if chosen is None:
            chosen = self.options.get("ENQUEUE_ON_COMMIT")
        if chosen is None:
            chosen = conf.settings().ENQUEUE_ON_COMMIT
        return bool(chosen)

    # ------------------------------------------------------------------ enqueueing
    def enqueue(self, task: Task, args: Any, kwargs: Any) -> TaskResult:
        """Adds the task's job now, or when the current transaction commits (see
        ``enqueue_on_commit``). The returned result is READY; its id is the job id."""
        # No validate_task() here: Django validated this Task when it was made (its
        # __post_init__, which using() runs too), and the job's own encoding below checks
        # the options again; validating twice more cost a third of an enqueue.
        requested_id = getattr(task, "job_id", None) or TASK_IDS.new()
        try:
            # As TaskResult normalizes them (Django's normalize_json), before anything is
            # written: the job and the returned result carry this copy.
            data = {
                "args": plain_json(args),
                "kwargs": plain_json(kwargs),
                "backend": self.alias,
            }
        except (TypeError, ValueError) as error:
            raise TypeError(
                f"Task {task.module_path}: arguments must be JSON-serializable "
                f"(lists, dicts, str, int, float, bool, None): {error}"
            ) from None
        options = {**self._job_options(task), "job_id": requested_id}
        queue = conf.get_queue(task.queue_name)

        delay = 0
        if task.run_after is not None:
            delay = max(0, math.ceil(to_ms(task.run_after) - now_ms()))
        options["delay"] = delay
        if not self._on_commit(task):
            made: list[TaskResult] = []

            def ready(encoded: EncodedJob) -> None:
                enqueued_at = from_ms(encoded.timestamp)
                made.append(self._ready_result(task, requested_id, data, enqueued_at))

            # The result is made while Redis writes the job: it waits for nothing else.
            job = queue.add_with(task.module_path, data, options, meanwhile=ready)
            result = made[0]
            # A deduplicated task is the job that already owns the id.
            object.__setattr__(result, "id", job.id)
            execution.send(task_enqueued, type(self), result)
            return result

        # Through the outbox: the job is a row of the caller's transaction (validated
        # now, pushed after the commit, by the relay if Redis cannot take it then).
        encoded = queue.encode(task.module_path, data, **options)
        result = self._ready_result(task, requested_id, data, None)  # enqueued at the commit

        def enqueued() -> None:
            object.__setattr__(result, "enqueued_at", from_ms(encoded.timestamp))
            execution.send(task_enqueued, type(self), result)

        outbox.stage(OutboxKind.JOBS, [encoded], None)
        transaction.on_commit(enqueued, robust=True)
        return result

    def _ready_result(
        self, task: Task, result_id: str, data: dict[str, Any], enqueued_at: datetime | None
    ) -> TaskResult:
        """The READY result of a task job whose data is `data` (made by `enqueue`)."""
        return plain_result(
            task=task,
            id=result_id,
            status=TaskResultStatus.READY,
            enqueued_at=enqueued_at,
            started_at=None,
            finished_at=None,
            last_attempted_at=None,
            args=data["args"],
            kwargs=data["kwargs"],
            backend=self.alias,
            errors=[],
            worker_ids=[],
        )

    # ------------------------------------------------------------------ results
    def get_result(self, result_id: str) -> TaskResult:
        """The task's result as its job says now; ``TaskResultDoesNotExist`` when no
        queue of this backend holds a task job with that id (or it was removed, see
        ``remove_on_complete`` / ``remove_on_fail``)."""
        job_id = str(result_id)
        queue = self._find_queue(job_id)
        if queue is None:
            raise TaskResultDoesNotExist(result_id)
        # State first, then the hash: a job finishing in between reads as still running
        # (with its final fields), never as finished without them.
        state = queue.get_job_state(job_id)
        job = queue.get_job(job_id)
        if job is None:
            raise TaskResultDoesNotExist(result_id)
        task = self._task_of(job, result_id)
        status = STATUS_BY_STATE.get(state, TaskResultStatus.READY)
        try:
            return result_from_job(task, job, status, self.alias)
        except ValueError as error:
            raise TaskResultDoesNotExist(
                f"{result_id}: job {job.id} of queue {queue.name!r} is not a task ({error})"
            ) from None

    async def aget_result(self, result_id: str) -> TaskResult:
        return await sync_to_async(self.get_result, thread_sensitive=False)(result_id)

    def _find_queue(self, job_id: str) -> Queue | None:
        names = sorted(name for name in self.queues if not _queue_problem(name))
        if not names or not job_id:
            return None
        queues = [conf.get_queue(name) for name in names]
        pipe = queues[0].client.pipeline(transaction=False)
        for queue in queues:
            # TYPE, not EXISTS: an id such as "wait" names one of the queue's own keys.
            pipe.type(queue.keys.job(job_id))
        kinds = pipe.execute()
        for queue, kind in zip(queues, kinds, strict=True):
            if kind in ("hash", b"hash"):
                return queue
        return None

    def _task_of(self, job: Job, result_id: str) -> Task:
        """The Task the job runs, as enqueued (queue, priority, run_after, this backend)."""
        try:
            task = import_string(job.name)
        except ImportError as error:
            raise TaskResultDoesNotExist(
                f'{result_id}: no task at "{job.name}": job {job.id} of queue '
                f"{job.queue_name!r} names a task that cannot be imported here ({error})"
            ) from None
        if not isinstance(task, Task):
            raise TaskResultDoesNotExist(
                f"{result_id}: job {job.id} of queue {job.queue_name!r} is not a task "
                f"({job.name!r} is not a @task)"
            )
        # opts keep the delay the job was added with (the hash's delay is reset when due)
        delay = job.opts.get("delay") or job.delay
        run_after = None
        if isinstance(delay, int) and not isinstance(delay, bool) and delay > 0:
            run_after = from_ms(job.timestamp + delay)
        changes: dict[str, Any] = {
            "queue_name": job.queue_name,
            "priority": from_bullmq_priority(job.priority),
            "backend": self.alias,
            "run_after": run_after,
        }
        if isinstance(task, FlowJobsTask):
            changes["job_id"] = job.id
        return replace(task, **changes)

    # ------------------------------------------------------------------ checks
    def check(self, **kwargs: Any) -> list[checks.CheckMessage]:
        found: list[checks.CheckMessage] = super().check(**kwargs)
        where = f"TASKS[{self.alias!r}]"
        if not self.queues:
            found.append(
                checks.Error(
                    f"{where} lists no QUEUES; the flowjobs backend needs them to find results.",
                    hint='Set "QUEUES": ["default", ...] (the flowjobs queues tasks may use).',
                    id="flowjobs.E101",
                )
            )
        for name in sorted(map(str, self.queues)):
            problem = _queue_problem(name)
            if problem:
                found.append(checks.Error(f"{where}: {problem}.", id="flowjobs.E102"))
        if not isinstance(self.options, Mapping):
            found.append(checks.Error(f'{where}["OPTIONS"] must be a dict.', id="flowjobs.E103"))
            return found
        unknown = sorted(set(self.options) - set(_OPTIONS))
        if unknown:
            found.append(
                checks.Error(
                    f'{where}["OPTIONS"] has unknown key(s) {", ".join(map(str, unknown))}.',
                    hint=f"Known options: {', '.join(_OPTIONS)}.",
                    id="flowjobs.E103",
                )
            )
        on_commit = self.options.get("ENQUEUE_ON_COMMIT")
        if on_commit is not None and not isinstance(on_commit, bool):
            found.append(
                checks.Error(
                    f'{where}["OPTIONS"]["ENQUEUE_ON_COMMIT"] must be True or False, '
                    f"got {on_commit!r}.",
                    id="flowjobs.E103",
                )
            )
        for message in execution.registration_problems(
            [name for name in self.queues if not _queue_problem(name)]
        ):
            found.append(
                checks.Error(
                    f"{where}: {message}",
                    hint="Give the tasks a queue of their own (QUEUES and queue_name).",
                    id="flowjobs.E104",
                )
            )
        return found
