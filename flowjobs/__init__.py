"""flowjobs: BullMQ-compatible jobs and flows on Redis, for Django projects.

Importing this package does not import Django: the engine is re-exported eagerly
(it only needs redis-py) and ``processor`` is loaded on first use. The
transaction-safe helpers live in ``flowjobs.enqueue`` (enqueue, enqueue_bulk,
enqueue_flow and their async twins, through the outbox of ``flowjobs.outbox``);
settings and shared queues in ``flowjobs.conf``.
"""

from __future__ import annotations

__version__ = "0.2.0"

from typing import TYPE_CHECKING, Any

from .engine import (
    Backoff,
    CancellationSignal,
    ConnectionFailed,
    DelayedError,
    Flow,
    FlowJobsError,
    FlowProducer,
    ForeignKeyValue,
    GroupInfo,
    InvalidConnection,
    InvalidEvent,
    InvalidJobData,
    InvalidJobOptions,
    InvalidQueueName,
    InvalidWorkerOptions,
    Job,
    JobBelongsToScheduler,
    JobCancelled,
    JobHasFailedChildren,
    JobLocked,
    JobNode,
    JobNotFound,
    JobNotInState,
    JobPendingChildren,
    JobScheduler,
    LockMismatch,
    ParentJobCannotBeReplaced,
    ParentJobNotFound,
    Queue,
    QueueEvents,
    QueueEventsProducer,
    QueueHasActiveJobs,
    QueueNotPaused,
    RateLimitError,
    RedisOutOfMemory,
    UnrecoverableError,
    WaitingChildrenError,
    WaitingError,
    Worker,
    register_backoff,
    sync_job_schedulers,
)

if TYPE_CHECKING:
    from .registry import processor

__all__ = [
    "Backoff",
    "CancellationSignal",
    "ConnectionFailed",
    "DelayedError",
    "Flow",
    "FlowJobsError",
    "FlowProducer",
    "GroupInfo",
    "InvalidArgument",
    "InvalidConnection",
    "InvalidEvent",
    "InvalidJobData",
    "InvalidJobOptions",
    "InvalidQueueName",
    "InvalidWorkerOptions",
    "Job",
    "JobBelongsToScheduler",
    "JobCancelled",
    "JobHasFailedChildren",
    "JobLocked",
    "JobNode",
    "ForeignKeyValue",
    "JobNotFound",
    "JobNotInState",
    "JobPendingChildren",
    "JobScheduler",
    "LockMismatch",
    "ParentJobCannotBeReplaced",
    "ParentJobNotFound",
    "Queue",
    "QueueEvents",
    "QueueEventsProducer",
    "QueueHasActiveJobs",
    "QueueNotPaused",
    "RateLimitError",
    "RedisOutOfMemory",
    "UnrecoverableError",
    "WaitingChildrenError",
    "WaitingError",
    "Worker",
    "processor",
    "register_backoff",
    "sync_job_schedulers",
]

_LAZY = {
    "processor": "registry",
}


def __getattr__(name: str) -> Any:
    module_name = _LAZY.get(name)
    if module_name is None:
        raise AttributeError(f"module 'flowjobs' has no attribute {name!r}")
    import importlib

    module = importlib.import_module(f"{__name__}.{module_name}")
    value = getattr(module, name)
    globals()[name] = value
    return value
