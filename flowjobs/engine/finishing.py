"""How a job leaves `active`: the script call for completion, final failure,
retry now, or retry later. Shared by the Worker (batched) and manual processing."""

from __future__ import annotations

import json
import math
import traceback
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .backoff import BackoffStrategy, retry_delay
from .errors import UnrecoverableError
from .options import dumps, now_ms
from .scripts import Call

if TYPE_CHECKING:
    from .job import Job


@dataclass(frozen=True, slots=True)
class FetchSettings:
    """What a fetch (move_to_active, or fetch-next after finishing) needs."""

    lock_duration_ms: int = 30_000
    limiter_max: int | None = None
    limiter_duration_ms: int | None = None
    worker_name: str | None = None

    def args(self) -> list[Any]:
        return [
            self.lock_duration_ms,
            "" if self.limiter_max is None else self.limiter_max,
            "" if self.limiter_duration_ms is None else self.limiter_duration_ms,
            self.worker_name or "",
        ]


def keep_jobs(option: Any, default: Any = None) -> tuple[int, Any, Any]:
    """BullMQ's removeOnComplete/removeOnFail -> (keep count, age s, limit). A value no
    producer of ours writes (a foreign `{"count": [1]}`) reads as "keep the job"."""
    value = option if option is not None else default
    if value is None or value is False:
        return -1, "", ""
    if value is True:
        return 0, "", ""
    if isinstance(value, int | float):
        count = _whole(value)
        return (-1 if count is None else count), "", ""
    if isinstance(value, dict):
        count, age, limit = (_whole(value.get(name)) for name in ("count", "age", "limit"))
        return (
            -1 if count is None else count,
            "" if age is None else age,
            "" if limit is None else limit,
        )
    return -1, "", ""


def _whole(value: Any) -> int | None:
    """A finite number as an int; None for anything else."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return int(value)


def error_message(error: BaseException | str) -> str:
    if isinstance(error, str):
        return error
    return str(error) or type(error).__name__


def failure_fields(job: Job, error: BaseException | str) -> dict[str, str]:
    """failedReason (plain text, like Node) and the stacktrace list, trimmed to
    stackTraceLimit."""
    message = error_message(error)
    stack = list(job.stacktrace)
    if isinstance(error, BaseException):
        text = "".join(traceback.format_exception(type(error), error, error.__traceback__))
        stack.append(text.rstrip())
    else:
        stack.append(message)
    limit = job.opts.get("stackTraceLimit")
    if isinstance(limit, int):
        stack = stack[-limit:] if limit > 0 else []
    return {"failedReason": message, "stacktrace": dumps(stack, "stacktrace")}


def finish_call(
    job: Job,
    target: str,
    value: str,
    token: str,
    keep: tuple[int, Any, Any],
    fetch_tokens: list[str] | None = None,
    fetch: FetchSettings | None = None,
    fields: dict[str, str] | None = None,
    metrics_max_points: int | None = None,
) -> Call:
    keys = job.queue.keys
    args: list[Any] = [
        keys.qualified,
        job.id,
        now_ms(),
        token,
        target,
        value,
        *keep,
        job.attempts,
        "" if metrics_max_points is None else metrics_max_points,
        dumps(fields, "fields") if fields else "",
        *(fetch or FetchSettings()).args(),
        *(fetch_tokens or []),
    ]
    return "move_to_finished", [keys.meta], args


def completed_value(returnvalue: Any, job: Job) -> str:
    if returnvalue is None:
        return "null"
    return dumps(returnvalue, f'return value of job "{job.id}"')


@dataclass(frozen=True, slots=True)
class FailurePlan:
    kind: str  # "fail" | "retry" (now) | "delay"
    delay_ms: int = 0


def plan_failure(
    job: Job,
    error: BaseException | str,
    strategies: dict[str, BackoffStrategy] | None = None,
) -> FailurePlan:
    """Retry while attempts remain (unless unrecoverable), after the backoff delay."""
    if isinstance(error, UnrecoverableError) or job.attempts_made + 1 >= job.attempts:
        return FailurePlan("fail")
    try:
        delay = retry_delay(
            job.opts.get("backoff"),
            job.attempts_made + 1,
            error if isinstance(error, BaseException) else Exception(error),
            job,
            strategies,
        )
    except LookupError:
        return FailurePlan("fail")
    if delay < 0:
        return FailurePlan("fail")
    return FailurePlan("delay", delay) if delay > 0 else FailurePlan("retry")


def failure_call(
    job: Job,
    error: BaseException | str,
    token: str,
    plan: FailurePlan,
    keep: tuple[int, Any, Any],
    fetch_tokens: list[str] | None = None,
    fetch: FetchSettings | None = None,
    metrics_max_points: int | None = None,
) -> Call:
    fields = failure_fields(job, error)
    keys = job.queue.keys
    if plan.kind == "delay":
        due = now_ms() + plan.delay_ms
        return (
            "move_to_delayed",
            [keys.meta],
            [
                keys.qualified,
                job.id,
                now_ms(),
                token,
                due,
                "0",
                dumps(fields, "fields"),
                *((fetch or FetchSettings()).args() if fetch_tokens else ()),
                *(fetch_tokens or []),
            ],
        )
    if plan.kind == "retry":
        lifo = "1" if job.opts.get("lifo") else "0"
        return (
            "retry_job",
            [keys.meta],
            [keys.qualified, job.id, now_ms(), token, lifo, dumps(fields, "fields")],
        )
    return finish_call(
        job,
        "failed",
        fields["failedReason"],
        token,
        keep,
        fetch_tokens,
        fetch,
        fields,
        metrics_max_points,
    )


def note_outcome(job: Job, call: Call, outcome: str, value: Any) -> None:
    """Brings the local Job up to what `call` (now run) wrote, as Node's moveToCompleted /
    moveToFailed leave theirs: listeners of completed/failed see the new values.
    `outcome` is "completed", "failed" or "retried"."""
    now = int(call[2][2])  # every finishing script takes (qk, jobId, now, ...)
    job.attempts_made += 1
    if outcome == "completed":
        job.returnvalue = value
        job.finished_on = now
        return
    fields = failure_fields(job, value)  # the same text the call wrote
    job.failed_reason = fields["failedReason"]
    job.stacktrace = json.loads(fields["stacktrace"])
    if outcome == "failed":
        job.finished_on = now
