"""CPU priority of runworker's background services (Linux; elsewhere nothing happens).

The mirror's projector thread lowers itself to the ``SCHED_IDLE`` policy once it has
caught up (``lower_this_thread``): it then runs only on CPU time that no worker, and no
Redis on the same machine, wants, and a woken worker preempts it at once. Niceness alone
was not enough: the projector still held a core a woken worker waited for.

An idle-policy thread gets almost no CPU while the machine is busy, and an unprivileged
process cannot raise it again (leaving ``SCHED_IDLE`` needs CAP_SYS_NICE). So the
runworker that started the services process watches it (``StarvationWatch``): when an
idle-policy thread of it has waited to run for most of a window, the process is
restarted; the new one catches up at ``SERVICES_NICENESS`` before it lowers itself again.
"""

from __future__ import annotations

import logging
import os
import time

logger = logging.getLogger("flowjobs.runner")

# An idle-policy thread that waited to run for this share of a window is starved.
STARVED_SHARE = 0.9

# Whether this process may lower a thread to SCHED_IDLE: only runworker's services
# process, which its runworker watches. Elsewhere (services run as threads of a worker
# process, say) a starved idle thread would go unseen, and while it waits for the CPU
# holding Python's lock, the process's other threads wait with it.
_idle_allowed = False


def allow_idle_threads() -> None:
    """Called by the process ``StarvationWatch`` watches (``runworker --services``)."""
    global _idle_allowed
    _idle_allowed = True


def lower_this_thread() -> bool:
    """Put the calling thread under ``SCHED_IDLE`` (True when it is), in a process that
    allows it. One way: an unprivileged thread cannot leave that policy again."""
    policy = getattr(os, "SCHED_IDLE", None)
    if policy is None or not _idle_allowed:  # not Linux, or nobody would see it starve
        return False
    try:
        os.sched_setscheduler(0, policy, os.sched_param(0))  # 0: this thread, on Linux
    except OSError as error:
        logger.info("could not lower this thread's CPU priority (%s)", error)
        return False
    return True


def _idle_threads_waits(pid: int) -> dict[int, int]:
    """{thread id: nanoseconds it has waited on a run queue} for the SCHED_IDLE threads
    of process ``pid`` (empty when there are none, or /proc does not tell)."""
    policy = getattr(os, "SCHED_IDLE", None)
    waits: dict[int, int] = {}
    if policy is None:
        return waits
    try:
        tids = [int(tid) for tid in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        return waits
    for tid in tids:
        try:
            if os.sched_getscheduler(tid) != policy:
                continue
            with open(f"/proc/{pid}/task/{tid}/schedstat") as stat:
                waits[tid] = int(stat.read().split()[1])
        except (OSError, ValueError, IndexError):
            continue  # the thread ended, or the kernel keeps no schedstat
    return waits


class StarvationWatch:
    """Tells whether an idle-policy thread of a process is starved: it waited to run
    for at least ``STARVED_SHARE`` of the last ``window`` seconds. Call ``starved()``
    as often as convenient; it compares with a sample at least ``window`` old."""

    def __init__(self, pid: int, window: float) -> None:
        self.pid = pid
        self.window = window
        self._since = time.monotonic()
        self._waits = _idle_threads_waits(pid)

    def starved(self) -> bool:
        now = time.monotonic()
        elapsed = now - self._since
        if elapsed < self.window:
            return False
        waits = _idle_threads_waits(self.pid)
        before, self._waits, self._since = self._waits, waits, now
        for tid, waited in waits.items():
            if tid in before and waited - before[tid] >= STARVED_SHARE * elapsed * 1e9:
                return True
        return False
