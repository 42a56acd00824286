"""flowjobs.engine: BullMQ-compatible queues, workers and flows on Redis (no Django)."""

from .backoff import Backoff, register_backoff
from .cancellation import CancellationSignal
from .errors import (
    ConnectionFailed,
    DelayedError,
    FlowJobsError,
    InvalidArgument,
    InvalidConnection,
    InvalidEvent,
    InvalidJobData,
    InvalidJobOptions,
    InvalidQueueName,
    InvalidWorkerOptions,
    JobBelongsToScheduler,
    JobCancelled,
    JobHasFailedChildren,
    JobLocked,
    JobNotFound,
    JobNotInState,
    JobPendingChildren,
    LockMismatch,
    ParentJobCannotBeReplaced,
    ParentJobNotFound,
    QueueHasActiveJobs,
    QueueNotPaused,
    RateLimitError,
    RedisOutOfMemory,
    UnrecoverableError,
    WaitingChildrenError,
    WaitingError,
)
from .events import QueueEvents, QueueEventsProducer
from .flow import Flow, FlowProducer, JobNode
from .groups import GroupInfo
from .isolation import ProcessorDied, ProcessorError, ProcessorTimedOut
from .job import Job
from .queue import Queue
from .schedulers import JobScheduler, SchedulerError, sync_job_schedulers
from .worker import Worker

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
    "JobNotFound",
    "JobNotInState",
    "JobPendingChildren",
    "JobScheduler",
    "LockMismatch",
    "ParentJobCannotBeReplaced",
    "ParentJobNotFound",
    "ProcessorDied",
    "ProcessorError",
    "ProcessorTimedOut",
    "Queue",
    "QueueEvents",
    "QueueEventsProducer",
    "QueueHasActiveJobs",
    "QueueNotPaused",
    "RateLimitError",
    "RedisOutOfMemory",
    "SchedulerError",
    "UnrecoverableError",
    "WaitingChildrenError",
    "WaitingError",
    "Worker",
    "register_backoff",
    "sync_job_schedulers",
]
