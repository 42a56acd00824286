"""Cancelling a running job from outside (`Queue.cancel_job`).

The request is one script call: it records `{token, reason}` in the job hash
(field `cancel`, tied to the lock token of the current run, so a later run of the
same job is never affected) and publishes it on the channel `<prefix>:<queue>:cancel`.
Every worker of the queue listens there and stops the job if it holds that run: the
processor sees `job.is_cancelled()` / `job.cancellation` (an Event) and, when it takes
a third argument, a `CancellationSignal` (Node's AbortSignal); an async processor gets
`asyncio.CancelledError`, a child process (isolation="process") is killed. The job then
fails, without retry, with `cancelled: <reason>`. A worker that missed the message finds
the request at its next lock renewal.

The worker answers on `<prefix>:<queue>:cancel-answer` with what it did (`killed`,
`interrupted` or `signalled`), so a caller such as the admin can say which happened:
a thread cannot be stopped from outside, only asked.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import TYPE_CHECKING, Any

from . import scripts
from .errors import error_for_code

if TYPE_CHECKING:
    from .job import Job
    from .keys import QueueKeys
    from .queue import Queue

FIELD = "cancel"

# What the worker holding a cancelled job did, as it answers (see `cancel_and_confirm`)
KILLED = "killed"  # isolation="process": the child running the job was killed
INTERRUPTED = "interrupted"  # async processor: CancelledError raised at its current await
SIGNALLED = "signalled"  # sync processor in a thread: it stops only if it checks the signal
NOT_STARTED = "not started"  # isolation="process": cancelled before a child had the job
NOT_RUNNING = "not running"  # no worker holds the job
NO_ANSWER = "no answer"  # recorded; no worker answered in time (lock renewal will see it)


def channel(keys: QueueKeys) -> str:
    return keys.key("cancel")


_DESCRIPTIONS = {
    KILLED: "stopped: its worker killed the process running it; the job failed",
    INTERRUPTED: "stopped: its async processor was interrupted; the job failed",
    SIGNALLED: (
        "NOT stopped by force: its processor runs in a worker thread, which cannot be "
        "killed; it was signalled and stops (the job fails) only if it checks the signal, "
        "otherwise it runs to its end"
    ),
    NOT_STARTED: "stopped before its processor began; the job failed",
    NOT_RUNNING: "not running, nothing to cancel",
    NO_ANSWER: (
        "cancel recorded, but no worker answered yet; the job's worker finds the request "
        "at its next lock renewal"
    ),
}


def describe(how: str) -> str:
    """What a person can truthfully be told after `cancel_and_confirm` answered `how`."""
    return _DESCRIPTIONS.get(how, how)


def answer_channel(keys: QueueKeys) -> str:
    return keys.key("cancel-answer")


def answer(job_id: str, token: str | None, how: str) -> str:
    return json.dumps({"jobId": job_id, "token": token, "how": how})


class CancellationSignal:
    """The cancel request of one run of a job, handed to a processor that takes a third
    argument (`def process(job, token, signal)`), shaped like Node's AbortSignal."""

    __slots__ = ("_job",)

    def __init__(self, job: Job) -> None:
        self._job = job

    @property
    def aborted(self) -> bool:
        return self._job.cancel_reason is not None

    @property
    def reason(self) -> str | None:
        return self._job.cancel_reason

    def throw_if_aborted(self) -> None:
        """Raises `JobCancelled` once the job was asked to stop."""
        self._job.raise_if_cancelled()

    def wait(self, timeout: float | None = None) -> bool:
        """Blocks up to `timeout` s (for ever with None) for a cancel; True if cancelled.
        Use it instead of time.sleep in a sync processor to stop at once."""
        return self._job.cancellation.wait(timeout)

    async def wait_async(self, timeout: float | None = None) -> bool:
        """`wait` for async code. (In a worker's async processor a cancel also interrupts
        whatever it awaits, this included, with CancelledError.)"""
        loop = asyncio.get_running_loop()
        cancelled = loop.create_future()

        def wake() -> None:
            # RuntimeError: the waiting loop closed since (the wait is over anyway)
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(lambda: cancelled.done() or cancelled.set_result(True))

        unregister = self._job.on_cancel(wake)
        try:
            # asyncio.timeout, not wait_for: Python 3.11's wait_for returns the result of
            # a future that is done when its task is cancelled, and a cancel both wakes this
            # wait and cancels the processor's task: the CancelledError was lost
            async with asyncio.timeout(timeout):
                await cancelled
        except TimeoutError:
            return self.aborted
        finally:
            unregister()  # a loop of short waits must not pile up listeners
        return True

    def __repr__(self) -> str:
        return f"<CancellationSignal aborted={self.aborted} reason={self.reason!r}>"


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


def cancel_and_confirm(queue: Queue, job_id: str, reason: str, timeout: float) -> str:
    """Cancels `job_id` like `cancel_job`, then waits up to `timeout` s for its worker to
    say what it did: KILLED, INTERRUPTED, SIGNALLED, NOT_STARTED; else NOT_RUNNING or
    NO_ANSWER."""
    job_id = str(job_id)
    pubsub = queue.client.pubsub(ignore_subscribe_messages=True)
    try:
        # subscribed before the request, so a quick answer is not missed
        pubsub.subscribe(answer_channel(queue.keys))
        if not cancel_job(queue, job_id, reason):
            return NOT_RUNNING
        deadline = time.monotonic() + timeout
        while (remaining := deadline - time.monotonic()) > 0:
            message = pubsub.get_message(timeout=remaining)
            if message is None:
                continue
            try:
                answered = json.loads(message["data"])
            except (ValueError, TypeError):
                continue
            if isinstance(answered, dict) and answered.get("jobId") == job_id:
                return str(answered.get("how"))
        return NO_ANSWER
    finally:
        pubsub.close()


def parse(raw: Any, job_id: str | None = None) -> tuple[str, str, str] | None:
    """(jobId, token, reason) of a published request, or of a stored one for `job_id`."""
    if not raw:
        return None
    try:
        request = json.loads(raw)
        return str(job_id or request["jobId"]), str(request["token"]), str(request["reason"])
    except (ValueError, KeyError, TypeError):
        return None
