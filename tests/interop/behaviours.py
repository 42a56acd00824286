"""Processors for flowjobs workers, driven by the same behaviour specs as worker.cjs.

A spec maps a job name (or "*") to a behaviour or a list of behaviours (one per
run of the same job in this process). Optional steps run first: `sleepMs`,
`gateKey` (wait until that Redis key exists), `progress`, `log`; then `action`: echo (default), return {value}, throw
{message}, unrecoverable {message}, delay {delayMs}, exit {code} (subprocess
only), hang, children, waitChildren, spawnChild {queue, name, data}. Each run reports a "process" line with the
same fields as worker.cjs. Standalone on purpose (no package-relative imports):
pyside_flowjobs.py imports it in a subprocess.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import Any

from flowjobs.engine import (
    DelayedError,
    Job,
    Queue,
    UnrecoverableError,
    WaitingChildrenError,
)

Emit = Callable[[dict[str, Any]], None]


class BehaviourError(RuntimeError):
    """What a behaviour with action "throw" raises (its message is the failedReason)."""


def now_ms() -> int:
    return int(time.time() * 1000)


def children_result(job: Job) -> dict[str, Any]:
    return {
        "values": job.get_children_values(),
        "ignored": job.get_ignored_children_failures(),
    }


def make_processor(
    behaviours: dict[str, Any], emit: Emit, stop: threading.Event
) -> Callable[[Job, str], Any]:
    """A processor(job, token) acting as the spec says; `stop` releases "hang"."""
    executions: dict[str, int] = {}
    lock = threading.Lock()

    def choose(job: Job) -> tuple[dict[str, Any], int]:
        key = f"{job.queue_name}:{job.id}"
        with lock:
            run = executions.get(key, 0)
            executions[key] = run + 1
        configured = behaviours.get(job.name, behaviours.get("*", {"action": "echo"}))
        if isinstance(configured, list):
            configured = configured[min(run, len(configured) - 1)]
        return configured or {"action": "echo"}, run + 1

    def process(job: Job, token: str) -> Any:
        behaviour, execution = choose(job)
        action = behaviour.get("action", "echo")
        emit(
            {
                "event": "process",
                "queue": job.queue_name,
                "id": job.id,
                "name": job.name,
                "data": job.data,
                "opts": job.opts,
                "attemptsMade": job.attempts_made,
                "attemptsStarted": job.attempts_started,
                "stalledCounter": job.stalled_counter,
                "parentKey": job.parent_key,
                "execution": execution,
                "action": action,
                "at": now_ms(),
            }
        )
        if behaviour.get("sleepMs"):
            stop.wait(behaviour["sleepMs"] / 1000)
        if behaviour.get("gateKey"):
            while not stop.is_set() and not job.queue.client.exists(behaviour["gateKey"]):
                stop.wait(0.02)
        if "progress" in behaviour:
            job.update_progress(behaviour["progress"])
        if "log" in behaviour:
            job.log(behaviour["log"])
        if action == "echo":
            return job.data
        if action == "return":
            return behaviour.get("value")
        if action == "throw":
            raise BehaviourError(behaviour.get("message", "py boom"))
        if action == "unrecoverable":
            raise UnrecoverableError(behaviour.get("message", "py unrecoverable"))
        if action == "delay":
            job.move_to_delayed(now_ms() + behaviour.get("delayMs", 1000), token)
            raise DelayedError()
        if action == "exit":
            os._exit(behaviour.get("code", 17))
        if action == "hang":
            stop.wait()
            raise BehaviourError("released from hang at shutdown")
        if action == "children":
            return children_result(job)
        if action == "spawnChild":
            child_queue = Queue(behaviour["queue"], connection=job.queue.client, prefix=job.prefix)
            child_queue.add(
                behaviour.get("name", "child"),
                behaviour.get("data", {}),
                parent={"id": job.id, "queue": job.queue.keys.qualified},
            )
        if action in ("waitChildren", "spawnChild"):
            if job.move_to_waiting_children(token):
                raise WaitingChildrenError()
            return children_result(job)
        raise BehaviourError(f"unknown action {action!r}")

    return process
