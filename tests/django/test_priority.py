"""The CPU priority of runworker's mirror thread, and the watch that keeps it from
starving: real threads, real CPU hogs (one busy process per core)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from flowjobs.priority import StarvationWatch, _idle_threads_waits, lower_this_thread
from tests.helpers import cpu_hogs, wait_for

pytestmark = [
    pytest.mark.skipif(not hasattr(os, "SCHED_IDLE"), reason="Linux scheduling"),
    pytest.mark.chaos,  # saturates the CPU
]

# A process whose second thread lowers itself to SCHED_IDLE, says "ready", then either
# spins (wants the CPU) or sleeps (does not).
_IDLE_THREAD = """
import sys, threading, time
from flowjobs.priority import allow_idle_threads, lower_this_thread
allow_idle_threads()
def run():
    assert lower_this_thread()
    print("ready", flush=True)
    if sys.argv[1] == "spin":
        while True:
            pass
    time.sleep(600)
threading.Thread(target=run, daemon=True).start()
time.sleep(600)
"""


@contextlib.contextmanager
def _process(code: str, *args: str, ready: bool = False) -> Iterator[int]:
    """A Python process running ``code`` (waited for to say "ready" when ``ready``, and
    for its idle thread to fall asleep when that is what it does next), and the machine
    saturated beside it; yields its pid."""
    process = subprocess.Popen(
        [sys.executable, "-c", code, *args], stdout=subprocess.PIPE, text=True
    )
    try:
        if ready:
            assert process.stdout.readline().strip() == "ready"
            if "sleep" in args:
                _wait_asleep(process.pid)
        with cpu_hogs():
            yield process.pid
    finally:
        process.kill()
        process.wait()


def _wait_asleep(pid: int) -> None:
    """Waits until the idle thread of ``pid`` that said "ready" sleeps. Between its
    "ready" and its sleep it still wants the CPU for a moment, and hogs started then
    would starve it there, for real (CI saw it)."""
    (tid,) = _idle_threads_waits(pid)
    task = f"/proc/{pid}/task/{tid}"

    def state_and_run_time() -> tuple[str, int]:
        with open(f"{task}/stat") as stat:
            state = stat.read().rsplit(")", 1)[1].split()[0]
        with open(f"{task}/schedstat") as schedstat:
            return state, int(schedstat.read().split()[0])

    seen = [state_and_run_time()]

    def asleep() -> bool:
        seen.append(state_and_run_time())
        (_, before), (state, after) = seen[-2:]
        return state == "S" and before == after  # off the CPU, and it ran no more

    wait_for(asleep, timeout=10, interval=0.05, message="the idle thread never slept")


def _never_starved(watch: StarvationWatch, seconds: float = 2.0) -> None:
    """Observes ``watch`` over several of its windows: it must never report starvation."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert not watch.starved()
        time.sleep(0.1)  # observing over several windows, not synchronising


def test_an_idle_priority_thread_that_gets_no_cpu_is_seen_as_starved():
    with _process(_IDLE_THREAD, "spin", ready=True) as pid:
        watch = StarvationWatch(pid, window=1.0)
        wait_for(watch.starved, timeout=20, interval=0.1, message="never seen as starved")


def test_an_idle_priority_thread_that_sleeps_is_not_starved():
    """Waiting for work (blocked in XREAD, say) is not waiting for the CPU."""
    with _process(_IDLE_THREAD, "sleep", ready=True) as pid:
        _never_starved(StarvationWatch(pid, window=0.5))


def test_a_normal_thread_waiting_for_the_cpu_is_not_the_watch_s_business():
    """Only idle-policy threads are watched: a thread at SERVICES_NICENESS gets its share."""
    with _process("while True: pass") as pid:
        _never_starved(StarvationWatch(pid, window=0.5))


def test_a_process_nobody_watches_never_lowers_a_thread():
    """Services running as threads of a worker process (no settings module to start a
    services process with): a starved idle thread there would go unseen, and hold up the
    worker's own threads while it waits for the CPU holding Python's lock."""
    assert not lower_this_thread()
    assert os.sched_getscheduler(0) != os.SCHED_IDLE
