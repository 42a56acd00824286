"""The worker's per-job log lines (logger ``flowjobs.worker``), written on its event loop.

Cheap by default, loud where an operator has to act:
- a failed attempt that will be retried: WARNING, with the error's class, the attempt
  number, the retry delay and the traceback;
- a final failure: ERROR, same details;
- a job started, completed, or moved by its processor (delayed, waiting for children,
  rate limited): DEBUG only. At INFO these lines cost more than running a no-op job
  (a formatted record and a handler lock per line), so they are opt-in: run
  ``runworker -v 2`` or set the ``flowjobs.worker`` logger to DEBUG.

The lines are written by the worker's loop thread after Redis recorded the outcome
(never by the processor threads, which would contend for the handler's lock), so they
say what really happened, for every pool (threads, async, child processes).
"""

from __future__ import annotations

import logging
from typing import Any

from .connection import printable
from .job import Job
from .options import now_ms

logger = logging.getLogger("flowjobs.worker")


def debug_enabled() -> bool:
    return logger.isEnabledFor(logging.DEBUG)


def _describe(job: Job, queue: str) -> str:
    # ids and names of foreign jobs may hold bytes that are not UTF-8 (kept as surrogates):
    # a log record must stay encodable for every handler
    return f'job {printable(job.id)} "{printable(job.name or "")}" of queue {queue}'


def _ran_ms(job: Job) -> str:
    # processedOn is set by the script that took the job: the time it ran, without
    # a clock read in the processor's thread
    if not job.processed_on:
        return ""
    return f" after {max(0, now_ms() - job.processed_on)} ms"


def _error_text(error: BaseException) -> str:
    kind = getattr(error, "type_name", None) or type(error).__name__
    message = str(error)
    return f"{kind}: {message}" if message else kind


def started(job: Job, queue: str) -> None:
    if debug_enabled():
        logger.debug("%s started", _describe(job, queue))


def recorded(job: Job, queue: str, outcome: str, value: Any, retry_delay_ms: int = 0) -> None:
    """One line for the outcome Redis just recorded (``completed``, ``retried``,
    ``failed``, ``moved`` or ``rate-limited``)."""
    if outcome == "failed" or outcome == "retried":
        error = value if isinstance(value, BaseException) else None
        attempts = max(job.attempts, 1)
        # the job was brought up to what Redis recorded: attempts_made counts this attempt
        attempt = f"attempt {min(max(job.attempts_made, 1), attempts)} of {attempts}"
        text = printable(_error_text(error) if error is not None else str(value))
        exc_info = (type(error), error, error.__traceback__) if error is not None else None
        if outcome == "retried":
            when = f"in {retry_delay_ms} ms" if retry_delay_ms else "now"
            logger.warning(
                "%s failed (%s)%s, retrying %s: %s",
                _describe(job, queue),
                attempt,
                _ran_ms(job),
                when,
                text,
                exc_info=exc_info,
            )
        else:
            logger.error(
                "%s failed for good (%s)%s: %s",
                _describe(job, queue),
                attempt,
                _ran_ms(job),
                text,
                exc_info=exc_info,
            )
        return
    if debug_enabled():
        logger.debug("%s %s%s", _describe(job, queue), outcome, _ran_ms(job))
