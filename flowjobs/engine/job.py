"""A job as stored in Redis (BullMQ's hash fields) and what can be done to it."""

from __future__ import annotations

import json
import logging
import threading
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from . import scripts
from .connection import printable, unreadable
from .errors import (
    DelayedError,
    FlowJobsError,
    InvalidJobOptions,
    JobCancelled,
    JobLocked,
    UnrecoverableError,
    WaitingChildrenError,
    error_for_code,
)
from .keys import JOB_KEY_TYPES, naming_foreign_values
from .options import dumps, loads, now_ms

_cancellation_lock = threading.Lock()

if TYPE_CHECKING:
    from .queue import Queue


@dataclass(slots=True)
class Operation:
    """One script call plus how to read its answer; run sync or async."""

    script: str
    keys: Sequence[str]
    args: Sequence[Any]
    check: Callable[[Any], Any]


def _int(value: Any) -> int:
    if value is None:
        return 0
    try:
        return int(value)
    except (TypeError, ValueError):
        pass
    try:
        return int(float(value))
    except (TypeError, ValueError, OverflowError):
        return 0


def _json_or_raw(text: str | None, default: Any) -> tuple[Any, str | None]:
    """Parses JSON text (within MAX_JSON_DEPTH); on failure returns the raw text and
    why it is not JSON."""
    if text is None:
        return default, None
    try:
        return loads(text), None
    except ValueError as error:
        return text, f"is not valid JSON ({error})"


def _unreadable_fields(fields: dict[str, str]) -> str | None:
    """Which field (name or value) of a job hash is not UTF-8, as a sentence part."""
    for name, value in fields.items():
        if name.isascii() and value.isascii():
            continue  # the common case, without a call
        problem = unreadable(name)
        if problem:
            return f'field name "{printable(name)}" {problem}'
        problem = unreadable(value)
        if problem:
            return f'field "{name}" {problem}'
    return None


class Job:
    """A job. `data`, `returnvalue` and `progress` are decoded JSON; `opts` is the
    stored BullMQ options dict (camelCase keys)."""

    def __init__(self, queue: Queue, job_id: str, fields: dict[str, str]) -> None:
        self.queue = queue
        self.id = job_id
        self.token: str | None = None
        self._apply(fields)

    def _apply(self, fields: dict[str, str]) -> None:
        # bytes that are not UTF-8 (foreign producers) arrive surrogate-escaped: such a
        # job is readable enough to be failed, with its unreadable fields left unparsed
        problem = unreadable(self.id)
        self.unreadable = f"id {problem}" if problem else _unreadable_fields(fields)
        raw = fields
        if self.unreadable:
            fields = {k: v for k, v in fields.items() if not (unreadable(k) or unreadable(v))}
        self.name: str = fields.get("name", "")
        self.data, self.data_error = _json_or_raw(fields.get("data"), {})
        opts, self.opts_error = _json_or_raw(fields.get("opts"), {})
        if not isinstance(opts, dict) and self.opts_error is None:
            self.opts_error = f"is a JSON {type(opts).__name__}, not an object"
        self.opts: dict[str, Any] = opts if isinstance(opts, dict) else {}
        self.timestamp = _int(fields.get("timestamp"))
        self.delay = _int(fields.get("delay"))
        self.priority = _int(fields.get("priority"))
        self.attempts_made = _int(fields.get("atm") or fields.get("attemptsMade"))
        self.attempts_started = _int(fields.get("ats"))
        self.stalled_counter = _int(fields.get("stc"))
        self.processed_on = _int(fields.get("processedOn")) or None
        self.finished_on = _int(fields.get("finishedOn")) or None
        self.returnvalue, _ = _json_or_raw(fields.get("returnvalue"), None)
        self.failed_reason: str | None = fields.get("failedReason")
        stack, _ = _json_or_raw(fields.get("stacktrace"), [])
        self.stacktrace: list[str] = stack if isinstance(stack, list) else []
        self.progress, _ = _json_or_raw(fields.get("progress"), 0)
        self.parent_key: str | None = fields.get("parentKey")
        parent, _ = _json_or_raw(fields.get("parent"), None)
        self.parent: dict[str, Any] | None = parent if isinstance(parent, dict) else None
        self.deferred_failure: str | None = fields.get("defa")
        self.repeat_job_key: str | None = fields.get("rjk")
        self.processed_by: str | None = fields.get("pb")
        self.dedup_id: str | None = fields.get("deid")
        self.raw = raw

    @classmethod
    def from_flat(cls, queue: Queue, job_id: str, flat: Sequence[str]) -> Job:
        it = iter(flat)
        return cls(queue, job_id, dict(zip(it, it, strict=True)))

    def decode_problem(self) -> str | None:
        """Why a worker cannot run this job as stored (None when it can)."""
        problem = self.unreadable
        if not problem and self.data_error:
            problem = f'field "data" {self.data_error}'
        if not problem and self.opts_error:
            problem = f'field "opts" {self.opts_error}'
        if not problem:
            return None
        return f'job "{printable(self.id)}" of queue "{self.queue.name}": {problem}'

    # --- identity ---------------------------------------------------------------------------
    @property
    def queue_name(self) -> str:
        return self.queue.name

    @property
    def prefix(self) -> str:
        return self.queue.prefix

    @property
    def key(self) -> str:
        return self.queue.keys.job(self.id)

    @property
    def attempts(self) -> int:
        return _int(self.opts.get("attempts"))

    def __repr__(self) -> str:
        return f"<Job {self.queue.keys.qualified}:{self.id} {self.name!r}>"

    # --- cancellation (queue.cancel_job) ----------------------------------------------------
    cancel_reason: str | None = None
    # True while a thread runs this job's processor (set by whoever hands it to the
    # thread): a cancel can then only signal it, never interrupt it
    runs_in_thread: bool = False
    # True while a worker's direct lane owns this job (set on the loop or by the lane)
    in_lane: bool = False
    _cancellation: threading.Event | None = None
    _cancel_listeners: list[Callable[[], Any]] | None = None

    @property
    def cancellation(self) -> threading.Event:
        """Set when the job is asked to stop (`queue.cancel_job`) while a worker runs it:
        a sync processor can `wait()` on it or poll `is_cancelled()`."""
        if self._cancellation is None:
            with _cancellation_lock:
                if self._cancellation is None:
                    self._cancellation = threading.Event()
        return self._cancellation

    def is_cancelled(self) -> bool:
        return self.cancel_reason is not None

    def raise_if_cancelled(self) -> None:
        """Raises `JobCancelled` once the job was asked to stop."""
        if self.cancel_reason is not None:
            raise self.cancelled_error()

    def cancelled_error(self) -> JobCancelled:
        return JobCancelled(self.cancel_reason or "")

    def on_cancel(self, listener: Callable[[], Any]) -> Callable[[], None]:
        """Calls `listener()` (from the thread that cancels) when the job is cancelled,
        at once if it already is. Returns a function that unregisters it."""
        with _cancellation_lock:
            if self.cancel_reason is None:
                if self._cancel_listeners is None:
                    self._cancel_listeners = []
                self._cancel_listeners.append(listener)
                return lambda: self._off_cancel(listener)
        listener()
        return lambda: None

    def _off_cancel(self, listener: Callable[[], Any]) -> None:
        with _cancellation_lock:
            if self._cancel_listeners and listener in self._cancel_listeners:
                self._cancel_listeners.remove(listener)

    def mark_cancelled(self, reason: str) -> None:
        """Called by the worker holding the job when a cancel request reaches it."""
        with _cancellation_lock:
            self.cancel_reason = reason
            listeners, self._cancel_listeners = self._cancel_listeners or [], None
        self.cancellation.set()
        for listener in listeners:
            try:
                listener()
            except Exception:  # a listener's failure must not stop the worker cancelling
                logging.getLogger("flowjobs.worker").exception(
                    "cancel listener of job %s failed", self.id
                )

    # --- running operations sync or async ---------------------------------------------------
    def _run(self, op: Operation) -> Any:
        queue = self.queue
        return op.check(
            scripts.run_for_queue(
                queue.client, queue.keys.qualified, op.script, op.keys, op.args, self._own_keys
            )
        )

    async def _arun(self, op: Operation) -> Any:
        queue = self.queue
        result = await scripts.arun_for_queue(
            queue.aclient(),
            queue.client,
            queue.keys.qualified,
            op.script,
            op.keys,
            op.args,
            self._own_keys,
        )
        return op.check(result)

    def _checker(self, operation: str, ok: Callable[[Any], Any] = lambda r: r) -> Callable:
        def check(result: Any) -> Any:
            if isinstance(result, int) and result < 0:
                raise error_for_code(result, self.id, self.queue.name, operation)
            return ok(result)

        return check

    def _qk_op(self, script: str, operation: str, *args: Any, key: str | None = None) -> Operation:
        return Operation(
            script,
            [key or self.queue.keys.meta],
            [self.queue.keys.qualified, *args],
            self._checker(operation),
        )

    # --- data, progress, logs ----------------------------------------------------------------
    def _op_update_data(self, data: Any) -> Operation:
        text = dumps(data, f'data of job "{self.id}"')

        def ok(_: Any) -> None:
            self.data = json.loads(text)

        return Operation("update_data", [self.key], [text], self._checker("update_data", ok))

    def update_data(self, data: Any) -> None:
        self._run(self._op_update_data(data))

    async def aupdate_data(self, data: Any) -> None:
        await self._arun(self._op_update_data(data))

    def _op_update_progress(self, progress: Any) -> Operation:
        text = dumps(progress, "progress")

        def ok(_: Any) -> None:
            self.progress = progress

        return Operation(
            "update_progress",
            [self.key],
            [self.queue.keys.qualified, self.id, text],
            self._checker("update_progress", ok),
        )

    def update_progress(self, progress: Any) -> None:
        self._run(self._op_update_progress(progress))

    async def aupdate_progress(self, progress: Any) -> None:
        await self._arun(self._op_update_progress(progress))

    def _op_log(self, line: str) -> Operation:
        keep = self.opts.get("kl")
        return Operation(
            "add_log",
            [self.key],
            [str(line), "" if keep is None else keep],
            self._checker("log"),
        )

    def log(self, line: str) -> int:
        """Appends a line to the job's log; returns the number of lines kept."""
        return self._run(self._op_log(line))

    async def alog(self, line: str) -> int:
        return await self._arun(self._op_log(line))

    def clear_logs(self, keep_logs: int | None = None) -> None:
        """Deletes the job's log lines, or all but the newest `keep_logs`, as Node's."""
        if keep_logs is not None and (
            isinstance(keep_logs, bool) or not isinstance(keep_logs, int)
        ):
            raise InvalidJobOptions(f'clear_logs of job "{self.id}": keep_logs must be an int')
        logs_key = f"{self.key}:logs"
        if keep_logs:
            self.queue.client.ltrim(logs_key, -keep_logs, -1)
        else:
            self.queue.client.delete(logs_key)

    # --- moves that need the lock token (processors, manual processing) ---------------------
    def _token(self, token: str | None) -> str:
        token = token if token is not None else self.token
        if token is None:
            raise FlowJobsError(f'job "{self.id}": a lock token is needed (pass token=...)')
        return token

    def extend_lock(self, token: str, duration_ms: int) -> bool:
        lost = scripts.run(
            self.queue.client,
            "extend_locks",
            [self.queue.keys.key("stalled")],
            [self.queue.keys.qualified, int(duration_ms), self.id, self._token(token)],
        )
        return not lost

    def move_to_completed(
        self,
        returnvalue: Any = None,
        token: str | None = None,
        fetch_next: bool = False,
        remove_on_complete: Any = None,
    ) -> Job | None:
        """Completes the job; with fetch_next, locks and returns the next job (or None)."""
        return self.queue._finish(
            self,
            "completed",
            returnvalue,
            self._token(token),
            fetch_next,
            remove_on_complete,
        )

    def move_to_failed(
        self,
        error: BaseException | str,
        token: str | None = None,
        fetch_next: bool = False,
        remove_on_fail: Any = None,
    ) -> Job | None:
        """Fails the job for good (no retry); see `Worker` for retries with backoff."""
        return self.queue._finish(
            self, "failed", error, self._token(token), fetch_next, remove_on_fail
        )

    def _op_move_to_delayed(self, timestamp_ms: int, token: str | None) -> Operation:
        now = now_ms()
        return self._qk_op(
            "move_to_delayed",
            "move_to_delayed",
            self.id,
            now,
            self._token(token),
            max(int(timestamp_ms), now),
            "1",
            "",
        )

    def move_to_delayed(self, timestamp_ms: int, token: str | None = None) -> None:
        """Runs the job again at `timestamp_ms` without counting an attempt; raise
        `DelayedError` afterwards so the worker leaves the job alone."""
        self._run(self._op_move_to_delayed(timestamp_ms, token))

    async def amove_to_delayed(self, timestamp_ms: int, token: str | None = None) -> None:
        await self._arun(self._op_move_to_delayed(timestamp_ms, token))

    def _op_move_to_wait(self, token: str | None) -> Operation:
        return self._qk_op("move_to_wait", "move_to_wait", self.id, self._token(token))

    def move_to_wait(self, token: str | None = None) -> int:
        """Puts the job back in line without counting an attempt; returns the
        limiter's remaining ttl in ms."""
        return self._run(self._op_move_to_wait(token))

    async def amove_to_wait(self, token: str | None = None) -> int:
        return await self._arun(self._op_move_to_wait(token))

    def _op_move_to_waiting_children(self, token: str | None, child: Any) -> Operation:
        child_key = ""
        if isinstance(child, dict):
            queue = str(child["queue"])
            if ":" not in queue:
                queue = f"{self.queue.prefix}:{queue}"
            child_key = f"{queue}:{child['id']}"
        elif child:
            child_key = str(child)
        return Operation(
            "move_to_waiting_children",
            [self.key],
            [
                self.queue.keys.qualified,
                self.id,
                self._token(token),
                child_key,
                now_ms(),
            ],
            self._checker("move_to_waiting_children", lambda r: r == 0),
        )

    def move_to_waiting_children(self, token: str | None = None, child: Any = None) -> bool:
        """Parks the job until its pending children finish. Returns False (not moved)
        when nothing is pending; after True, raise `WaitingChildrenError`."""
        return self._run(self._op_move_to_waiting_children(token, child))

    async def amove_to_waiting_children(self, token: str | None = None, child: Any = None) -> bool:
        return await self._arun(self._op_move_to_waiting_children(token, child))

    # --- management ---------------------------------------------------------------------------
    def get_state(self) -> str:
        return self.queue.get_job_state(self.id)

    def reload(self) -> Job:
        fields = self.queue.client.hgetall(self.key)
        if not fields:
            raise error_for_code(-1, self.id, self.queue.name, "reload")
        self._apply(fields)
        return self

    def retry(self, state: str = "failed", reset_attempts: bool = False) -> None:
        """Runs a completed or failed job again."""
        if state not in ("completed", "failed"):
            raise FlowJobsError(f'retry: state must be "completed" or "failed", got {state!r}')
        lifo = "1" if self.opts.get("lifo") else "0"
        flag = "1" if reset_attempts else "0"
        self._run(
            Operation(
                "reprocess_job",
                [self.key],
                [self.queue.keys.qualified, self.id, state, lifo, flag, flag],
                self._checker(f"retry from {state}"),
            )
        )

    def remove(self, remove_children: bool = True) -> None:
        """Removes the job (and its children); refuses while it is being processed."""
        result = self._run(
            Operation(
                "remove_job",
                [self.key],
                [
                    self.queue.keys.qualified,
                    self.id,
                    "1" if remove_children else "0",
                    now_ms(),
                ],
                self._checker("remove"),
            )
        )
        if result == 0:
            raise JobLocked(
                f'remove: job "{self.id}" in queue "{self.queue.name}" (or one of its children) '
                "is locked by a worker"
            )

    def promote(self) -> None:
        """Moves a delayed job to wait now."""
        self._run(
            Operation(
                "promote",
                [self.queue.keys.key("delayed")],
                [self.queue.keys.qualified, self.id],
                self._checker("promote"),
            )
        )
        self.delay = 0

    def change_delay(self, delay_ms: int) -> None:
        self._run(
            Operation(
                "change_delay",
                [self.queue.keys.key("delayed")],
                [self.queue.keys.qualified, self.id, now_ms(), int(delay_ms)],
                self._checker("change_delay"),
            )
        )
        self.delay = int(delay_ms)

    def change_priority(self, priority: int = 0, lifo: bool = False) -> None:
        from .options import MAX_PRIORITY

        if not isinstance(priority, int) or not 0 <= priority <= MAX_PRIORITY:
            from .errors import InvalidJobOptions

            raise InvalidJobOptions(f"priority must be 0..{MAX_PRIORITY:_}, got {priority!r}")
        self._run(
            self._qk_op(
                "change_priority",
                "change_priority",
                self.id,
                priority,
                "1" if lifo else "0",
            )
        )
        self.priority = priority

    def _own_keys(self) -> dict[str, str]:
        """The job's own keys beside its hash, with what TYPE says of each."""
        return {f"{self.key}:{suffix}": kind for suffix, kind in JOB_KEY_TYPES.items()}

    def _keys_to_name(self) -> tuple[Any, list[str], dict[str, str]]:
        """Where `naming_foreign_values` looks for another client's value: the job's
        queue and its own keys."""
        return self.queue.client, [self.queue.keys.qualified], self._own_keys()

    # --- flows -------------------------------------------------------------------------------
    @naming_foreign_values
    def get_children_values(self) -> dict[str, Any]:
        """Child job key -> the child's return value, for completed children."""
        raw = self.queue.client.hgetall(f"{self.key}:processed")
        return {key: _json_or_raw(value, None)[0] for key, value in raw.items()}

    @naming_foreign_values
    def get_ignored_children_failures(self) -> dict[str, str]:
        """Child job key -> failed reason, for children failed under ignore/continue policies."""
        return self.queue.client.hgetall(f"{self.key}:failed")

    def get_failed_children_values(self) -> dict[str, str]:
        return self.get_ignored_children_failures()

    @naming_foreign_values
    def get_dependencies_count(self) -> dict[str, int]:
        pipe = self.queue.client.pipeline(transaction=False)
        pipe.hlen(f"{self.key}:processed")
        pipe.scard(f"{self.key}:dependencies")
        pipe.hlen(f"{self.key}:failed")
        pipe.zcard(f"{self.key}:unsuccessful")
        processed, unprocessed, ignored, failed = pipe.execute()
        return {
            "processed": processed,
            "unprocessed": unprocessed,
            "ignored": ignored,
            "failed": failed,
        }

    @naming_foreign_values
    def get_dependencies(
        self,
        processed_cursor: int | None = None,
        unprocessed_cursor: int | None = None,
        count: int = 1000,
    ) -> dict[str, Any]:
        """Children by outcome. Without cursors every child is returned; with cursors
        one page (HSCAN/SSCAN) each, plus the next cursors (0 = done)."""
        client = self.queue.client
        if processed_cursor is None and unprocessed_cursor is None:
            return {
                "processed": self.get_children_values(),
                "unprocessed": sorted(client.smembers(f"{self.key}:dependencies")),
                "ignored": client.hgetall(f"{self.key}:failed"),
                "failed": client.zrange(f"{self.key}:unsuccessful", 0, -1),
            }
        next_processed, processed = client.hscan(
            f"{self.key}:processed", processed_cursor or 0, count=count
        )
        next_unprocessed, unprocessed = client.sscan(
            f"{self.key}:dependencies", unprocessed_cursor or 0, count=count
        )
        return {
            "processed": {k: _json_or_raw(v, None)[0] for k, v in processed.items()},
            "next_processed_cursor": next_processed,
            "unprocessed": sorted(unprocessed),
            "next_unprocessed_cursor": next_unprocessed,
        }

    def remove_unprocessed_children(self) -> int:
        """Removes pending children no worker holds (with their sub-trees); returns how many."""
        return self._run(
            Operation(
                "remove_unprocessed_children",
                [self.key],
                [now_ms()],
                self._checker("remove_unprocessed_children"),
            )
        )

    def remove_child_dependency(self) -> bool:
        """Detaches this job from its parent; True if it was a pending dependency."""
        if not self.parent_key:
            return False
        result = self._run(
            Operation(
                "remove_child_dependency",
                [self.key],
                [self.parent_key, now_ms()],
                self._checker("remove_child_dependency"),
            )
        )
        if result == 0:
            self.parent_key = None
            self.parent = None
        return result == 0


def stack_lines(error: BaseException) -> str:
    return "".join(traceback.format_exception(type(error), error, error.__traceback__)).rstrip()


__all__ = ["DelayedError", "Job", "UnrecoverableError", "WaitingChildrenError"]
