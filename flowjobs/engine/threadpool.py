"""The threads that run a worker's synchronous processors.

`loop.run_in_executor` costs, per job, a `concurrent.futures.Future` chained to an
asyncio one, a wake-up of a pool thread and one of the event loop (a write to its
self-pipe). Wake-ups are what a sync worker spends its time on (futex calls, context
switches, threads queueing for the GIL), so this pool makes as few as it can:
- towards the threads: a burst of jobs wakes ONE idle thread. A thread that takes a
  job while more wait wakes one more (so slow jobs still run side by side, up to
  `size`), and a thread that finishes a job takes the next one without sleeping. Quick
  jobs are then run by a few threads in a row instead of one woken thread each;
- towards the loop: a thread that finishes a job while an earlier wake-up is still
  pending adds its result to that one, so the loop wakes once per burst.
"""

from __future__ import annotations

import asyncio
import collections
import threading
from collections.abc import Callable
from typing import Any

_STOP = None


def carried(error: BaseException) -> BaseException:
    """What a processor's thread hands on for `error`: StopIteration cannot travel
    through a future (asyncio refuses it), so it becomes a RuntimeError naming it; the
    direct lane, which needs no future, hands on the same, so a job fails alike there."""
    if isinstance(error, StopIteration):
        return RuntimeError(f"processor raised {error!r}")
    return error


class ThreadPool:
    """Up to `size` threads, started as jobs need them, serving one event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, size: int, name: str) -> None:
        self._loop = loop
        self._size = size
        self._name = name
        self._threads: list[threading.Thread] = []
        self._mutex = threading.Lock()
        self._pending: collections.deque[Any] = collections.deque()  # under _mutex
        # each idle thread sleeps on its own locked lock; releasing it wakes that thread
        self._idle: list[threading.Lock] = []  # under _mutex
        self._waking = 0  # threads woken (or started) that have not looked yet; _mutex
        self.wakeups = 0  # threads woken from idle, for the tests and the curious
        self._lock = threading.Lock()
        self._finished: list[tuple[asyncio.Future, bool, Any]] = []  # under _lock
        self._wakeup_pending = False  # under _lock

    def owns(self, thread: threading.Thread) -> bool:
        return thread in self._threads

    def run(self, function: Callable[..., Any], *args: Any) -> asyncio.Future:
        """Runs `function(*args)` on a thread; the future resolves on the loop."""
        future = self._loop.create_future()
        with self._mutex:
            self._pending.append((future, function, args))
            if self._waking == 0:
                if self._idle:
                    self._wake_one()
                elif len(self._threads) < self._size:
                    self._start_thread()
        return future

    def _wake_one(self) -> None:
        """Under _mutex, with an idle thread."""
        self._waking += 1
        self.wakeups += 1
        self._idle.pop().release()

    def _start_thread(self) -> None:
        """Under _mutex: a new thread counts as woken until it looks for work."""
        self._waking += 1
        thread = threading.Thread(
            target=self._serve, name=f"{self._name}-{len(self._threads)}", daemon=True
        )
        self._threads.append(thread)
        thread.start()

    def _next_item(self, sleeper: threading.Lock, woken: bool) -> Any:
        """The next job for this thread, sleeping while there is none."""
        while True:
            with self._mutex:
                if woken:
                    self._waking -= 1
                    woken = False
                if self._pending:
                    item = self._pending.popleft()
                    if self._pending and self._waking == 0:
                        # more jobs wait while this one runs: get another thread going
                        if self._idle:
                            self._wake_one()
                        elif len(self._threads) < self._size:
                            self._start_thread()
                    return item
                sleeper.acquire()  # held, so the next acquire sleeps until a release
                self._idle.append(sleeper)
            sleeper.acquire()
            sleeper.release()
            woken = True

    def _serve(self) -> None:
        sleeper = threading.Lock()
        woken = True
        while True:
            item = self._next_item(sleeper, woken)
            woken = False
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
        for future, ok, value in finished:
            if future.cancelled():
                continue
            if ok:
                future.set_result(value)
                continue
            future.set_exception(carried(value))

    def shutdown(self, wait: bool = True) -> None:
        """Drops the jobs no thread has started, stops the threads as they finish their
        current job; `wait` joins them. Called on the loop's thread."""
        with self._mutex:
            dropped = list(self._pending)
            self._pending.clear()
            self._pending.extend([_STOP] * len(self._threads))
            while self._idle:
                self._wake_one()
        for item in dropped:
            item[0].cancel()
        if wait:
            for thread in self._threads:
                thread.join()
