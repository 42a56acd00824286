"""``runworker --reload``: restart the worker when a Python file changes (development).

Built on Django's autoreloader (``django.utils.autoreload``), as ``runserver`` is: the
command runs in a parent that only starts a copy of itself (``DJANGO_AUTORELOAD_ENV``)
and starts it again whenever the copy exits with ``EXIT_RELOAD`` (3, Django's code).

In the copy the worker keeps its own signal handling in the main thread, and Django's
reloader watches every loaded module (processors included) from a thread. A change asks
the worker to stop as SIGTERM does, so the active jobs finish and are recorded before
the restart (no job is left to the stalled-job check). When the worker cannot start or
dies (a processor module that does not import, Redis down), the copy waits for the next
change instead of exiting, and so does the parent when the copy fails before the
worker even starts (a syntax error found by ``django.setup()``).

SIGTERM to the parent is passed on to the worker; Ctrl-C reaches both from the
terminal, and only the worker acts on it, so either stops the loop gracefully.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import threading
from collections.abc import Callable
from types import FrameType

from django.utils import autoreload

__all__ = [
    "EXIT_RELOAD",
    "ChangeWatcher",
    "WorkerReloader",
    "in_reloaded_process",
    "restart_on_change",
]

logger = logging.getLogger("flowjobs.runner")

EXIT_RELOAD = 3  # what django.utils.autoreload's parent loop restarts on


def in_reloaded_process() -> bool:
    """True in the copy the reloading parent started (where the worker runs)."""
    return os.environ.get(autoreload.DJANGO_AUTORELOAD_ENV) == "true"


class ChangeWatcher:
    """Django's reloader in a thread; ``changed`` is set on the first change seen."""

    def __init__(self, on_change: Callable[[], None] | None = None) -> None:
        self.changed = threading.Event()
        if on_change is not None:
            self.on_change = on_change  # type: ignore[method-assign]
        self.reloader = autoreload.get_reloader()
        autoreload.file_changed.connect(self._on_change, dispatch_uid=f"flowjobs-{id(self)}")
        self.thread = threading.Thread(target=self._watch, name="flowjobs-autoreload", daemon=True)
        self.thread.start()

    def _watch(self) -> None:
        """``reloader.run()`` without its URLconf import, saying when the first look at
        every file is done (a change before it would go unseen)."""
        from django.apps import apps

        self.reloader.wait_for_apps_ready(apps, threading.main_thread())
        autoreload.autoreload_started.send(sender=self.reloader)
        for ticks, _ in enumerate(self.reloader.tick()):
            if ticks == 0:
                logger.info(
                    "runworker --reload: watching for file changes with %s",
                    type(self.reloader).__name__,
                )
            if self.reloader.should_stop:
                return

    def _on_change(self, sender: object, file_path: object, **kwargs: object) -> bool:
        if sender is not self.reloader:
            return False
        if self.changed.is_set():
            return True
        logger.info("runworker --reload: %s changed; restarting the worker", file_path)
        self.changed.set()
        self.on_change()
        return True  # handled: no sys.exit() in the watcher thread

    def on_change(self) -> None:
        """What to do on the first change (nothing but ``changed`` by default)."""

    def stop(self) -> None:
        self.reloader.stop()
        autoreload.file_changed.disconnect(dispatch_uid=f"flowjobs-{id(self)}")


class WorkerReloader(ChangeWatcher):
    """In the reloaded copy: a change stops the worker as SIGTERM would."""

    def __init__(self) -> None:
        self.terminated = False
        self.wake = threading.Event()
        # Until the worker installs its own handlers, and after it restores them, a
        # SIGTERM (the parent passing one on) must end the loop, not kill the process.
        signal.signal(signal.SIGTERM, self._terminate)
        super().__init__()

    def _terminate(self, number: int, frame: FrameType | None) -> None:
        if not self.changed.is_set():  # not the SIGTERM on_change() sends
            self.terminated = True
            self.wake.set()

    def on_change(self) -> None:
        self.wake.set()
        os.kill(os.getpid(), signal.SIGTERM)

    def exit_code(self, code: int) -> int:
        """The worker stopped with ``code``: EXIT_RELOAD after a change; after a failure,
        wait for the change that fixes it (or a SIGTERM)."""
        if not (self.changed.is_set() or self.terminated or code == 0):
            logger.error(
                "runworker --reload: the worker stopped with code %s; waiting for a file to change",
                code,
            )
            self.wake.wait()
        self.stop()
        return EXIT_RELOAD if self.changed.is_set() else code


def restart_on_change() -> int:
    """The parent: runs the command again in a child until it exits with anything but
    ``EXIT_RELOAD``; a child that fails before its worker runs is restarted after the
    next change."""
    environment = {**os.environ, autoreload.DJANGO_AUTORELOAD_ENV: "true"}
    arguments = autoreload.get_child_arguments()
    child: subprocess.Popen[bytes] | None = None
    stopping = threading.Event()
    wake = threading.Event()  # a change, or a signal

    def on_signal(number: int, frame: FrameType | None) -> None:
        stopping.set()
        wake.set()
        # Ctrl-C reaches the child from the terminal itself; SIGTERM is passed on.
        if number == signal.SIGTERM and child is not None and child.poll() is None:
            child.send_signal(number)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    while True:
        child = subprocess.Popen(arguments, env=environment, close_fds=False)
        code = child.wait()
        if code == EXIT_RELOAD and not stopping.is_set():
            continue
        if code == 0 or stopping.is_set():
            return code if code >= 0 else 128 - code
        logger.error(
            "runworker --reload: the worker process exited with code %s before it could "
            "watch for changes; waiting for a file to change",
            code,
        )
        watcher = ChangeWatcher(on_change=wake.set)
        wake.wait()
        watcher.stop()
        if stopping.is_set():
            return code
        wake.clear()
