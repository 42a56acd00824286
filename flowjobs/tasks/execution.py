"""Running task jobs in flowjobs workers, and registering the processor that does it.

Every queue a ``FlowJobsBackend`` lists in ``TASKS`` gets ``run_task_job`` as its default
processor through ``flowjobs.registry`` (at start-up, from ``flowjobs/jobs.py``), so
``manage.py runworker`` with no arguments runs task queues like any other.

For each attempt the processor records ``{"worker_id", "started_at"}`` in the job's data
(and the ``error`` when the task raises), then sends Django's ``task_started``, calls the
task, and sends ``task_finished`` once the task is SUCCESSFUL or finally FAILED (a
failed attempt that will be retried sends nothing: the task is READY again).
"""

from __future__ import annotations

import logging
import os
import socket
import traceback
from collections.abc import Iterable
from dataclasses import replace
from typing import Any

from django.conf import settings as django_settings
from django.core.exceptions import ImproperlyConfigured
from django.dispatch import Signal
from django.tasks import task_backends
from django.tasks.base import (
    DEFAULT_TASK_QUEUE_NAME,
    Task,
    TaskContext,
    TaskError,
    TaskResultStatus,
)
from django.tasks.signals import task_finished, task_started
from django.utils import timezone
from django.utils.module_loading import import_string

from .. import registry
from ..engine import Job, UnrecoverableError
from ..engine.options import now_ms
from ..signals import send_robustly
from .errors import UnknownTask
from .results import (
    arguments,
    attempts_of,
    class_path,
    from_bullmq_priority,
    plain_json,
    result_from_job,
)

__all__ = [
    "register_queues",
    "register_task_queues",
    "registration_problems",
    "run_task_job",
    "send",
    "task_queue_names",
]

logger = logging.getLogger("flowjobs.tasks")


def send(signal: Signal, sender: Any, task_result: Any) -> None:
    """Sends a django.tasks signal; a receiver that raises is logged, and neither stops
    the other receivers nor changes what happens to the task (see `send_robustly`)."""
    send_robustly(
        signal,
        sender,
        logger,
        f"a django.tasks signal (task {task_result.id})",
        task_result=task_result,
    )


# --------------------------------------------------------------------------- registration


def task_queue_names() -> list[str]:
    """The queues of every FlowJobsBackend in ``settings.TASKS``."""
    from .backend import FlowJobsBackend

    configured = getattr(django_settings, "TASKS", None)
    names: set[str] = set()
    if not isinstance(configured, dict):
        return []
    for params in configured.values():
        if not isinstance(params, dict):
            continue
        try:
            backend = import_string(params.get("BACKEND", ""))
        except ImportError:
            continue  # Django reports a backend it cannot import
        if isinstance(backend, type) and issubclass(backend, FlowJobsBackend):
            queues = params.get("QUEUES", [DEFAULT_TASK_QUEUE_NAME])
            names.update(q for q in queues if isinstance(q, str) and q and ":" not in q)
    return sorted(names)


def register_queues(names: Iterable[str], strict: bool = True) -> None:
    """Registers ``run_task_job`` as the default processor of each queue. A queue that
    already has another default processor raises ImproperlyConfigured (``strict``) or
    is skipped (the backend's system check reports it)."""
    for name in names:
        try:
            registry.register(run_task_job, name)
        except ValueError as error:
            if strict:
                raise ImproperlyConfigured(
                    f"task queue {name!r} (TASKS): {error}; give the tasks a queue of their own"
                ) from None


def register_task_queues() -> list[str]:
    """Registers the processor for every task queue in ``settings.TASKS``."""
    names = task_queue_names()
    register_queues(names)
    return names


def registration_problems(names: Iterable[str]) -> list[str]:
    problems = []
    for name in sorted(names):
        try:
            registry.register(run_task_job, name)
        except ValueError as error:
            problems.append(str(error))
    return problems


# --------------------------------------------------------------------------- running


def _worker_id(job: Job) -> str:
    # The engine stores the fetching worker's name in the job ("pb"); runworker names its
    # workers host:pid, and so does this fallback for unnamed workers.
    return job.processed_by or f"{socket.gethostname()}:{os.getpid()}"


def _resolve(job: Job) -> tuple[Task, str]:
    """The job's Task (with its queue, priority and backend alias) and that alias."""
    try:
        task = import_string(job.name)
    except ImportError as error:
        raise UnknownTask(
            f'task job "{job.id}" of queue "{job.queue_name}": no task at "{job.name}" '
            f"(cannot be imported: {error})"
        ) from None
    if not isinstance(task, Task):
        raise UnknownTask(
            f'task job "{job.id}" of queue "{job.queue_name}": {job.name!r} is not a @task '
            f"(it is {type(task).__name__}); only tasks run from the task queues"
        )
    try:
        arguments(job)
    except ValueError as error:
        raise UnknownTask(f'task job "{job.id}" of queue "{job.queue_name}": {error}') from None
    data = job.data
    alias = data.get("backend") if isinstance(data.get("backend"), str) else task.backend
    try:
        task = replace(
            task,
            queue_name=job.queue_name,
            priority=from_bullmq_priority(job.priority),
            backend=alias,
        )
    except Exception as error:  # noqa: BLE001 - InvalidTaskBackend, InvalidTask, ...
        raise UnknownTask(
            f'task job "{job.id}" of queue "{job.queue_name}": task {job.name!r} cannot run '
            f"with backend {alias!r} here ({error})"
        ) from None
    return task, alias


def _save_attempts(job: Job, records: list[dict[str, Any]]) -> None:
    job.update_data({**job.data, "attempts": records})


def _error_record(error: BaseException) -> dict[str, str]:
    return {
        "exception_class_path": class_path(error),
        "traceback": "".join(traceback.format_exception(error)),
    }


def _is_final(job: Job, error: BaseException) -> bool:
    # The engine's rule: retry while attempts remain, unless the error is unrecoverable.
    return isinstance(error, UnrecoverableError) or job.attempts_made + 1 >= job.attempts


def run_task_job(job: Job) -> Any:
    """The processor of task queues: runs the task the job names, returns its value."""
    records = attempts_of(job)
    record: dict[str, Any] = {
        "worker_id": _worker_id(job),
        "started_at": job.processed_on or now_ms(),
    }
    records.append(record)
    try:
        task, alias = _resolve(job)
    except UnknownTask as error:
        record["error"] = _error_record(error)
        _save_attempts_quietly(job, records)
        raise
    _save_attempts(job, records)
    sender = type(task_backends[alias])
    result = result_from_job(task, job, TaskResultStatus.RUNNING, alias)
    send(task_started, sender, result)
    args, kwargs = arguments(job)
    try:
        if task.takes_context:
            value = task.call(TaskContext(task_result=result), *args, **kwargs)
        else:
            value = task.call(*args, **kwargs)
        value = plain_json(value)
    except BaseException as error:
        record["error"] = _error_record(error)
        _save_attempts_quietly(job, records)
        if _is_final(job, error):
            result.errors.append(TaskError(**record["error"]))
            object.__setattr__(result, "status", TaskResultStatus.FAILED)
            object.__setattr__(result, "finished_at", timezone.now())
            # Inside the except block: Django's own receiver logs sys.exc_info().
            send(task_finished, sender, result)
        raise
    object.__setattr__(result, "status", TaskResultStatus.SUCCESSFUL)
    object.__setattr__(result, "finished_at", timezone.now())
    object.__setattr__(result, "_return_value", value)
    send(task_finished, sender, result)
    return value


def _save_attempts_quietly(job: Job, records: list[dict[str, Any]]) -> None:
    """Records a failed attempt; if that cannot be written, the job still fails with its
    own error (which the engine records)."""
    try:
        _save_attempts(job, records)
    except Exception as error:  # noqa: BLE001 - a Redis error must not hide the task's
        logger.warning("could not record the failed attempt of task job %s: %s", job.id, error)
