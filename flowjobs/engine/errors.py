"""Errors raised by the engine, and the signals a processor may raise."""

from __future__ import annotations

import redis.exceptions


class FlowJobsError(Exception):
    """Base class of every error flowjobs raises."""


class InvalidJobOptions(FlowJobsError, ValueError):
    """A job option is unknown or has a bad value; nothing was written."""


class InvalidJobData(FlowJobsError, ValueError):
    """Job data (or a return value) is not JSON-serialisable; nothing was written."""


class InvalidEvent(FlowJobsError, ValueError):
    """A custom event (`QueueEventsProducer.publish_event`) with a bad name or fields;
    nothing was written."""


class InvalidQueueName(FlowJobsError, ValueError):
    """A queue name or prefix that would break the key layout."""


class InvalidConnection(FlowJobsError, ValueError):
    """`connection=` is neither a Redis URL, a redis-py client nor None."""


class InvalidWorkerOptions(FlowJobsError, ValueError):
    """A Worker (or Queue) setting is out of range; nothing was started or written."""


class InvalidArgument(FlowJobsError, ValueError):
    """An argument of a public call is out of range or of the wrong type; nothing was
    written."""


class RedisOutOfMemory(FlowJobsError, redis.exceptions.OutOfMemoryError):
    """Redis refused a write: it reached maxmemory (under the noeviction policy).
    Nothing was written; free memory or raise maxmemory and try again. It subclasses
    redis-py's error, so `except redis.ResponseError` still catches it."""


class ForeignKeyValue(FlowJobsError, redis.exceptions.ResponseError):
    """One of a queue's own keys holds another kind of value than the queue keeps there
    (another client wrote it), and Redis refused the call (WRONGTYPE). The message names
    the keys; delete or rename them. It subclasses redis-py's error, as Redis's refusal."""


class JobNotFound(FlowJobsError, LookupError):
    """The job does not exist (any more) in Redis."""


class JobNotInState(FlowJobsError):
    """The job is not in the state the operation needs (e.g. not active, not delayed)."""


class LockMismatch(FlowJobsError):
    """The job's lock is held by another token, or has expired: the caller no longer owns it."""


class JobPendingChildren(FlowJobsError):
    """A job cannot complete while it still has pending children."""


class JobHasFailedChildren(FlowJobsError):
    """A job cannot complete: a child with fail_parent_on_failure failed."""


class ParentJobNotFound(FlowJobsError, LookupError):
    """The parent named in the options does not exist."""


class ParentJobCannotBeReplaced(FlowJobsError):
    """A job with this id already exists and belongs to another parent."""


class JobLocked(FlowJobsError):
    """The job (or a job below it) is being processed and cannot be removed."""


class JobBelongsToScheduler(FlowJobsError):
    """The job is the pending iteration of a job scheduler."""


class QueueNotPaused(FlowJobsError):
    """Obliterate needs a paused queue."""


class QueueHasActiveJobs(FlowJobsError):
    """Obliterate refuses to delete active jobs unless forced."""


class ConnectionFailed(FlowJobsError, redis.exceptions.ConnectionError, ConnectionError):
    """Redis could not be reached, or the connection broke before the reply came.

    Raised by the producer calls (`Queue.add`, `add_bulk`, `FlowProducer.add`) instead
    of redis-py's error, which it subclasses (so `except redis.ConnectionError` still
    works). A call that raised it never reported success; if the connection broke
    after the request was sent the job may exist all the same, so retry with the same
    `job_id` to stay idempotent."""


# --- signals raised by processors -------------------------------------------------------------


class UnrecoverableError(FlowJobsError):
    """Fail the job now, without further attempts."""

    def __init__(self, message: str = "bullmq:unrecoverable") -> None:
        super().__init__(message)


class DelayedError(FlowJobsError):
    """The processor moved its job to delayed (job.move_to_delayed) and stops here."""

    def __init__(self, message: str = "bullmq:movedToDelayed") -> None:
        super().__init__(message)


class WaitingChildrenError(FlowJobsError):
    """The processor moved its job to waiting-children and stops here."""

    def __init__(self, message: str = "bullmq:movedToWaitingChildren") -> None:
        super().__init__(message)


class WaitingError(FlowJobsError):
    """The processor moved its job back to wait (job.move_to_wait) and stops here."""

    def __init__(self, message: str = "bullmq:movedToWait") -> None:
        super().__init__(message)


class RateLimitError(FlowJobsError):
    """The queue is rate limited (queue.rate_limit(ms)); the job goes back to wait."""

    def __init__(self, message: str = "bullmq:rateLimitExceeded") -> None:
        super().__init__(message)


class JobCancelled(UnrecoverableError):
    """The job was cancelled while it ran (`queue.cancel_job`); it fails without retry,
    with the reason `cancelled: <reason>`."""

    def __init__(self, reason: str = "") -> None:
        super().__init__(f"cancelled: {reason}" if reason else "cancelled")
        self.reason = reason


# Negative codes returned by the Lua scripts, turned into errors with context.
def error_for_code(code: int, job_id: str, queue_name: str, operation: str) -> FlowJobsError:
    where = f'job "{job_id}" in queue "{queue_name}"'
    match code:
        case -1:
            return JobNotFound(f"{operation}: {where} does not exist")
        case -2:
            return LockMismatch(
                f"{operation}: the lock of {where} is missing (expired or never taken)"
            )
        case -3:
            return JobNotInState(f"{operation}: {where} is not in the expected state")
        case -4:
            return JobPendingChildren(f"{operation}: {where} still has pending children")
        case -5:
            return ParentJobNotFound(f"{operation}: the parent of {where} does not exist")
        case -6:
            return LockMismatch(f"{operation}: the lock of {where} is held by another token")
        case -7:
            return ParentJobCannotBeReplaced(
                f"{operation}: {where} already exists and belongs to another parent"
            )
        case -8:
            return JobBelongsToScheduler(
                f"{operation}: {where} is the pending iteration of a job scheduler"
            )
        case -9:
            return JobHasFailedChildren(f"{operation}: {where} has failed children")
    return FlowJobsError(f"{operation}: unexpected code {code} for {where}")
