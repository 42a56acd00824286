"""How a task is stored as a job, and how a job reads back as a Django ``TaskResult``.

A task is a job whose name is the task's module path and whose data is

    {"args": [...], "kwargs": {...}, "backend": "<TASKS alias>",
     "attempts": [{"worker_id": "...", "started_at": <ms>, "error": {...}}, ...]}

``attempts`` is written by the worker as attempts happen (one entry per attempt, the
``error`` when that attempt raised); a producer only writes ``args`` and ``kwargs``
(``backend`` is optional), so a Node.js BullMQ producer can enqueue Django tasks too.
"""

from __future__ import annotations

from dataclasses import MISSING, fields
from datetime import UTC, datetime
from typing import Any

from django.conf import settings as django_settings
from django.tasks.base import (
    DEFAULT_TASK_PRIORITY,
    TASK_MAX_PRIORITY,
    TASK_MIN_PRIORITY,
    TaskError,
    TaskResult,
    TaskResultStatus,
)
from django.utils import timezone
from django.utils.json import normalize_json

from ..engine import Job
from .errors import TaskAborted

__all__ = [
    "PRIORITY_OFFSET",
    "STATUS_BY_STATE",
    "arguments",
    "attempts_of",
    "class_path",
    "from_bullmq_priority",
    "from_ms",
    "plain_json",
    "plain_result",
    "result_from_job",
    "to_bullmq_priority",
    "to_ms",
]

# Django: -100..100, higher runs sooner, 0 by default. BullMQ: 1..2_097_151, lower runs
# sooner, and 0 means "no priority" (the wait list, taken before every prioritized job).
# 101 - p maps 100 -> 1, 0 -> 101, -100 -> 201: every task is prioritized, so the whole
# Django range keeps its order (FIFO within one priority, as BullMQ orders ties).
PRIORITY_OFFSET = TASK_MAX_PRIORITY + 1

STATUS_BY_STATE: dict[str, TaskResultStatus] = {
    "waiting": TaskResultStatus.READY,
    "prioritized": TaskResultStatus.READY,
    "delayed": TaskResultStatus.READY,
    "waiting-children": TaskResultStatus.READY,
    "active": TaskResultStatus.RUNNING,
    "completed": TaskResultStatus.SUCCESSFUL,
    "failed": TaskResultStatus.FAILED,
}


def to_bullmq_priority(priority: int) -> int:
    """Django's task priority as the BullMQ job priority."""
    return PRIORITY_OFFSET - int(priority)


def from_bullmq_priority(stored: int) -> int:
    """A job's BullMQ priority as Django's; 0 (unprioritized) and values outside the
    mapped range (jobs from other producers) read as Django's default priority."""
    priority = PRIORITY_OFFSET - stored
    if stored <= 0 or not TASK_MIN_PRIORITY <= priority <= TASK_MAX_PRIORITY:
        return DEFAULT_TASK_PRIORITY
    return priority


_SCALARS = frozenset({str, int, float, bool, type(None)})


def plain_json(value: Any) -> Any:
    """Django's ``normalize_json(value)``, the same result, quicker on plain values: exact
    dicts, lists, tuples and scalars are walked here (Django tests each against the
    ``Mapping`` and ``Sequence`` ABCs: a tenth of an enqueue's Python for a dozen
    arguments); anything else, subclasses included, goes to Django's."""
    kind = type(value)
    if kind in _SCALARS:
        return value
    if kind is dict:
        return {plain_json(key): plain_json(item) for key, item in value.items()}
    if kind is list or kind is tuple:
        return [plain_json(item) for item in value]
    return normalize_json(value)


# TaskResult's fields: those its constructor takes, and the others with their defaults
# (None when one has a default factory: then plain_result uses the constructor).
_RESULT_INIT_FIELDS = frozenset(f.name for f in fields(TaskResult) if f.init)
_RESULT_OTHER_FIELDS: dict[str, Any] | None = {
    f.name: f.default for f in fields(TaskResult) if not f.init
}
if any(default is MISSING for default in _RESULT_OTHER_FIELDS.values()):
    _RESULT_OTHER_FIELDS = None


def plain_result(**values: Any) -> TaskResult:
    """``TaskResult(**values)`` whose ``args`` and ``kwargs`` are already what
    ``plain_json`` returns, and the caller's own copies: the same object, made without
    TaskResult's ``__post_init__`` walking them again through ``normalize_json`` (13 µs
    of an enqueue for a dozen arguments). Values that are not exactly the constructor's
    fields (another Django's TaskResult) go to the constructor."""
    if _RESULT_OTHER_FIELDS is None or values.keys() != _RESULT_INIT_FIELDS:
        return TaskResult(**values)
    result = object.__new__(TaskResult)
    for name, value in values.items():
        object.__setattr__(result, name, value)
    for name, value in _RESULT_OTHER_FIELDS.items():
        object.__setattr__(result, name, value)
    return result


def from_ms(ms: Any) -> datetime | None:
    """A BullMQ millisecond timestamp as a datetime (aware in UTC when USE_TZ)."""
    if not isinstance(ms, int | float) or isinstance(ms, bool) or ms <= 0:
        return None
    moment = datetime.fromtimestamp(ms / 1000, tz=UTC)
    return moment if django_settings.USE_TZ else timezone.make_naive(moment)


def to_ms(moment: datetime) -> float:
    """A datetime as epoch milliseconds (a naive one is in the current time zone)."""
    if timezone.is_naive(moment):
        moment = timezone.make_aware(moment)
    return moment.timestamp() * 1000


def class_path(error: BaseException) -> str:
    kind = type(error)
    return f"{kind.__module__}.{kind.__qualname__}"


def arguments(job: Job) -> tuple[list[Any], dict[str, Any]]:
    """The task's args and kwargs from the job's data; ValueError when not shaped so."""
    data = job.data
    if not isinstance(data, dict):
        raise ValueError(f"its data is a JSON {type(data).__name__}, not an object")
    args = data.get("args", [])
    kwargs = data.get("kwargs", {})
    if not isinstance(args, list) or not isinstance(kwargs, dict):
        raise ValueError('its data must be {"args": [...], "kwargs": {...}}')
    return args, kwargs


def attempts_of(job: Job) -> list[dict[str, Any]]:
    """The attempt records the workers wrote into the job's data (oldest first)."""
    data = job.data
    records = data.get("attempts") if isinstance(data, dict) else None
    if not isinstance(records, list):
        return []
    return [record for record in records if isinstance(record, dict)]


def _task_error(record: Any) -> TaskError | None:
    if not isinstance(record, dict):
        return None
    path, text = record.get("exception_class_path"), record.get("traceback")
    if not isinstance(path, str) or not isinstance(text, str):
        return None
    return TaskError(exception_class_path=path, traceback=text)


def _aborted(job: Job) -> TaskError:
    """The final failure of a job whose last attempt recorded no error of its own."""
    text = job.stacktrace[-1] if job.stacktrace else ""
    reason = job.failed_reason or "the job failed"
    if reason not in text:
        text = f"{text}\n{reason}" if text else reason
    return TaskError(exception_class_path=class_path(TaskAborted()), traceback=text)


def result_from_job(task: Any, job: Job, status: TaskResultStatus, backend: str) -> TaskResult:
    """The TaskResult of ``task`` as ``job`` records it, in ``status``."""
    args, kwargs = arguments(job)
    records = attempts_of(job)
    errors = [error for error in (_task_error(r.get("error")) for r in records) if error]
    if status == TaskResultStatus.FAILED and not (
        records and _task_error(records[-1].get("error"))
    ):
        errors.append(_aborted(job))
    starts = [r.get("started_at") for r in records]
    finished = status in (TaskResultStatus.SUCCESSFUL, TaskResultStatus.FAILED)
    result = TaskResult(
        task=task,
        id=job.id,
        status=status,
        enqueued_at=from_ms(job.timestamp),
        started_at=from_ms(starts[0]) if starts else from_ms(job.processed_on),
        finished_at=from_ms(job.finished_on) if finished else None,
        last_attempted_at=from_ms(starts[-1]) if starts else from_ms(job.processed_on),
        args=args,
        kwargs=kwargs,
        backend=backend,
        errors=errors,
        worker_ids=[str(r.get("worker_id", "")) for r in records],
    )
    if status == TaskResultStatus.SUCCESSFUL:
        object.__setattr__(result, "_return_value", job.returnvalue)
    return result
