"""Django signals sent from inside ``runworker`` as jobs run.

- ``job_started(sender=queue_name, job=job)``: the worker took the job.
- ``job_completed(sender=queue_name, job=job, result=value)``: recorded as completed.
- ``job_failed(sender=queue_name, job=job, exception=error)``: an attempt failed
  (``job.failed_reason`` holds the reason and ``job.attempts_made`` counts this attempt;
  ``job.finished_on`` is set only when it failed for good, else it will be retried).

They hang on the engine Worker's local events (``active``, ``completed``, ``failed``),
which fire on the worker's event loop (or, up to concurrency 4 with a sync processor,
on the thread running the job). Receivers must be free to use the ORM, so the
signals are sent from one sender thread per process instead, in the order the events
happened, with ``close_old_connections()`` around each (as around a request). A
receiver that raises is logged and does not affect the job or the other receivers.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from typing import Any

from django.dispatch import Signal

from .database import close_half_made_connections, tidy_connections

__all__ = [
    "connect_worker",
    "flush",
    "job_completed",
    "job_failed",
    "job_started",
    "send_now",
]

logger = logging.getLogger("flowjobs.signals")

job_started = Signal()
job_completed = Signal()
job_failed = Signal()


class _Sender:
    """A daemon thread sending queued signals one after the other."""

    def __init__(self) -> None:
        self.pending: queue.Queue[tuple[Signal, str, dict[str, Any]]] = queue.Queue()
        self.thread: threading.Thread | None = None
        self.lock = threading.Lock()

    def put(self, signal: Signal, sender: str, **kwargs: Any) -> None:
        # `receivers` first: has_listeners takes the signal's lock, three times a job
        if not signal.receivers or not signal.has_listeners(sender):
            return
        self.pending.put((signal, sender, kwargs))
        with self.lock:
            if self.thread is None or not self.thread.is_alive():
                self.thread = threading.Thread(
                    target=self._run, name="flowjobs-signals", daemon=True
                )
                self.thread.start()

    def _run(self) -> None:
        while True:
            signal, sender, kwargs = self.pending.get()
            try:
                tidy_connections()
                send_now(signal, sender, **kwargs)
                tidy_connections()
            finally:
                self.pending.task_done()

    def flush(self, timeout: float | None = None) -> bool:
        """Waits until every queued signal was sent; False on timeout."""
        done = threading.Event()

        def wait() -> None:
            self.pending.join()
            done.set()

        threading.Thread(target=wait, daemon=True).start()
        return done.wait(timeout)


def send_now(signal: Signal, sender: str, **kwargs: Any) -> None:
    """Sends ``signal`` in this thread (see `send_robustly`)."""
    send_robustly(signal, sender, logger, "a flowjobs signal", **kwargs)


def send_robustly(
    signal: Signal, sender: Any, log: logging.Logger, what: str, **kwargs: Any
) -> None:
    """Sends ``signal`` in this thread. A receiver that raises is logged on ``log``
    (``what`` names the signal) and stops neither the other receivers nor the caller; a
    connection whose ``connect()`` failed halfway in it is closed, not left to the
    thread's next job."""
    raised = False
    for receiver, error in signal.send_robust(sender=sender, **kwargs):
        if error is not None:
            raised = True
            log.error(
                "receiver %r of %s raised %r",
                receiver,
                what,
                error,
                exc_info=(type(error), error, error.__traceback__),
            )
    if raised:
        close_half_made_connections()


_sender = _Sender()


def flush(timeout: float | None = None) -> bool:
    """Waits for the signals queued so far to be sent (runworker calls it before exiting)."""
    return _sender.flush(timeout)


def connect_worker(worker: Any, send: Callable[..., None] | None = None) -> None:
    """Sends the signals above for the jobs of an engine ``Worker``: through the sender
    thread, or through ``send(signal, sender, **kwargs)`` when given (the test kit sends
    them in the test's thread)."""
    queue_name = worker.queue.name
    send = send or _sender.put

    def on_active(job: Any) -> None:
        send(job_started, queue_name, job=job)

    def on_completed(job: Any, result: Any) -> None:
        send(job_completed, queue_name, job=job, result=result)

    def on_failed(job: Any, error: Any) -> None:
        send(job_failed, queue_name, job=job, exception=error)

    worker.on("active", on_active)
    worker.on("completed", on_completed)
    worker.on("failed", on_failed)
