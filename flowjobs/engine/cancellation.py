"""Cancelling a running job from outside (`Queue.cancel_job`).

The request is one script call: it records `{token, reason}` in the job hash
(field `cancel`, tied to the lock token of the current run, so a later run of the
same job is never affected) and publishes it on the channel `<prefix>:<queue>:cancel`.
Every worker of the queue listens there and stops the job if it holds that run: the
processor sees `job.is_cancelled()` / `job.cancellation` (an Event), an async
processor gets `asyncio.CancelledError`, a child process (isolation="process") is
killed. The job then fails, without retry, with `cancelled: <reason>`. A worker that
missed the message finds the request at its next lock renewal.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from . import scripts
from .errors import error_for_code

if TYPE_CHECKING:
    from .keys import QueueKeys
    from .queue import Queue

FIELD = "cancel"


def channel(keys: QueueKeys) -> str:
    return keys.key("cancel")


def cancel_job(queue: Queue, job_id: str, reason: str = "") -> bool:
    """Asks the worker running `job_id` to stop it; False when the job is not running."""
    job_id = str(job_id)
    result = scripts.run(
        queue.client,
        "cancel_job",
        [queue.keys.job(job_id)],
        [queue.keys.qualified, job_id, str(reason)],
    )
    if result < 0:
        raise error_for_code(result, job_id, queue.name, "cancel_job")
    return result == 1


def parse(raw: Any, job_id: str | None = None) -> tuple[str, str, str] | None:
    """(jobId, token, reason) of a published request, or of a stored one for `job_id`."""
    if not raw:
        return None
    try:
        request = json.loads(raw)
        return str(job_id or request["jobId"]), str(request["token"]), str(request["reason"])
    except (ValueError, KeyError, TypeError):
        return None
