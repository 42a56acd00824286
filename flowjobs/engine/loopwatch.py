"""Names the job whose async processor blocks the worker's event loop.

An ``async def`` processor that calls blocking code (``time.sleep``, a sync HTTP
client, the sync ORM) stops the whole worker: no other job runs, no lock is renewed,
and once the lock expires the stalled-job check hands the job to another worker, so it
runs twice. From inside the loop nothing can be seen while it is blocked, so a small
thread watches a heartbeat the loop keeps, and when the heartbeat is late it reads the
task the loop is running and logs which job's processor that is.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Mapping
from typing import Any

logger = logging.getLogger("flowjobs.worker")

# A loop late by this much is blocked (a healthy one is late by milliseconds).
BLOCKED_AFTER_S = 1.0


class LoopWatch:
    """Started on the worker's loop with ``start()``; ``stop()`` ends its thread."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        queue_name: str,
        active: Mapping[str, Any],
        lock_duration_ms: int,
    ) -> None:
        self._loop = loop
        self._queue_name = queue_name
        self._active = active
        self._lock_duration_s = lock_duration_ms / 1000
        self._beat = time.monotonic()
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None

    async def heartbeat(self) -> None:
        """Runs on the loop for as long as the worker does."""
        interval = BLOCKED_AFTER_S / 4
        while True:
            self._beat = time.monotonic()
            await asyncio.sleep(interval)

    def start(self) -> asyncio.Task:
        self._thread = threading.Thread(
            target=self._watch, name=f"flowjobs-loopwatch-{self._queue_name}", daemon=True
        )
        self._thread.start()
        return asyncio.ensure_future(self.heartbeat())

    def stop(self) -> None:
        self._stopped.set()

    def _watch(self) -> None:
        blocked_since: float | None = None
        culprit = ""
        while not self._stopped.wait(BLOCKED_AFTER_S / 4):
            late = time.monotonic() - self._beat
            if late < BLOCKED_AFTER_S:
                if blocked_since is not None:
                    logger.warning(
                        "%s: the event loop runs again after %.1f s",
                        culprit,
                        time.monotonic() - blocked_since,
                    )
                    blocked_since = None
                continue
            if blocked_since is None:
                blocked_since = self._beat
                culprit = self._culprit()
                logger.warning(
                    "%s has blocked the worker's event loop for %.1f s: no other job runs and "
                    "no lock is renewed meanwhile, and after %.0f s (lock_duration) the job "
                    "may be taken by another worker and run twice. Call blocking code through "
                    "asyncio.to_thread() (or asgiref's sync_to_async), or make the processor a "
                    "plain def.",
                    culprit,
                    late,
                    self._lock_duration_s,
                )

    def _culprit(self) -> str:
        task = asyncio.current_task(self._loop)
        for job in list(self._active.values()):
            if task is not None and getattr(job, "_task", None) is task:
                return (
                    f'the async processor of job {job.id} "{job.name}" of queue {self._queue_name}'
                )
        return f"code running on the event loop of the worker for queue {self._queue_name}"
