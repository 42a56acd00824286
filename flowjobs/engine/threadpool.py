"""The threads that run a worker's synchronous processors.

`loop.run_in_executor` costs, per job, a `concurrent.futures.Future` chained to an
asyncio one and a wake-up of the event loop (a write to its self-pipe). Here a job
is one asyncio future and an item on a queue; a thread that finishes a job while
an earlier wake-up is still pending adds its result to that one, so a busy worker
wakes its loop once per burst of finished jobs instead of once per job.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable
from typing import Any

_STOP = None


class ThreadPool:
    """Up to `size` threads, started as jobs need them, serving one event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, size: int, name: str) -> None:
        self._loop = loop
        self._size = size
        self._name = name
        self._inbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._running = 0  # jobs handed out and not yet delivered (loop thread only)
        self._lock = threading.Lock()
        self._finished: list[tuple[asyncio.Future, bool, Any]] = []  # under _lock
        self._wakeup_pending = False  # under _lock

    def run(self, function: Callable[..., Any], *args: Any) -> asyncio.Future:
        """Runs `function(*args)` on a thread; the future resolves on the loop."""
        future = self._loop.create_future()
        self._running += 1
        if self._running > len(self._threads) and len(self._threads) < self._size:
            thread = threading.Thread(
                target=self._serve, name=f"{self._name}-{len(self._threads)}", daemon=True
            )
            self._threads.append(thread)
            thread.start()
        self._inbox.put((future, function, args))
        return future

    def _serve(self) -> None:
        while True:
            item = self._inbox.get()
            if item is _STOP:
                return
            future, function, args = item
            try:
                outcome = (future, True, function(*args))
            except BaseException as error:  # noqa: BLE001 - the job's outcome, whatever it is
                outcome = (future, False, error)
            del item, future, function, args
            with self._lock:
                self._finished.append(outcome)
                if self._wakeup_pending:
                    continue
                self._wakeup_pending = True
            try:
                self._loop.call_soon_threadsafe(self._deliver)
            except RuntimeError:  # the loop is closed: a forced close left this job behind
                return

    def _deliver(self) -> None:
        with self._lock:
            finished, self._finished = self._finished, []
            self._wakeup_pending = False
        self._running -= len(finished)
        for future, ok, value in finished:
            if future.cancelled():
                continue
            if ok:
                future.set_result(value)
                continue
            try:
                future.set_exception(value)
            except TypeError:  # StopIteration cannot travel through a future
                future.set_exception(RuntimeError(f"processor raised {value!r}"))

    def shutdown(self, wait: bool = True) -> None:
        """Drops the jobs no thread has started, stops the threads as they finish their
        current job; `wait` joins them. Called on the loop's thread."""
        while True:
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                break
            item[0].cancel()
        for _ in self._threads:
            self._inbox.put(_STOP)
        if wait:
            for thread in self._threads:
                thread.join()
