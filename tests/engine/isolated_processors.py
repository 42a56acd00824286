"""Processors for the process-isolation tests: importable by dotted path from a child."""

from __future__ import annotations

import asyncio
import os
import signal
import time

from flowjobs.engine import UnrecoverableError


def double(job):
    job.update_progress(50)
    return {"pid": os.getpid(), "value": job.data["n"] * 2}


def crash(job):
    if job.data.get("how") == "exit":
        os._exit(3)
    os.kill(os.getpid(), signal.SIGSEGV)


def spin(job):
    deadline = time.monotonic() + job.data.get("seconds", 30)
    while time.monotonic() < deadline:
        pass
    return "finished"


def spin_reporting(job):
    """`spin`, once it has said (its progress: "spinning") that a child process runs it."""
    job.update_progress("spinning")
    return spin(job)


def fail(job):
    if job.data.get("unrecoverable"):
        raise UnrecoverableError("no way")
    raise KeyError("missing thing")


async def async_double(job):
    await asyncio.sleep(0)
    await job.aupdate_progress(75)
    return job.data["n"] * 2


def not_json(job):
    return {1, 2}


def initialize():
    os.environ["FLOWJOBS_CHILD_INITIALIZED"] = str(os.getpid())


def initialized(job):
    return os.environ.get("FLOWJOBS_CHILD_INITIALIZED") == str(os.getpid())


def report_signal(job, token, signal):
    """Takes the cancellation signal (a third parameter) in a child process."""
    return {"aborted": signal.aborted, "reason": signal.reason, "token": token == job.token}
