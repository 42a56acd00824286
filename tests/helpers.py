"""Test helpers: waiting on a condition with a deadline (never a bare sleep), free ports."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import redis

from flowjobs.testing.server import delete_prefixed_keys
from tests.redis_server import free_port

# django.tasks is Django 6.0's: on Django 5.2 (the LTS flowjobs supports) the settings
# configure no TASKS and the django.tasks tests are left out.
HAS_DJANGO_TASKS = importlib.util.find_spec("django.tasks") is not None

__all__ = [
    "cpu_hogs",
    "delete_prefixed_keys",
    "free_port",
    "new_prefix",
    "until_cancelled",
    "wait_for",
    "work_for",
]

T = TypeVar("T")  # a TypeVar, not PEP 695: the floors stage runs the suite on Python 3.11


def wait_for(
    predicate: Callable[[], T],
    timeout: float = 10.0,
    interval: float = 0.005,
    message: str | Callable[[], str] = "",
) -> T:
    """Poll `predicate` until it returns something truthy, and return that value.

    Raises AssertionError (so the test fails with `message`) when the deadline passes;
    the predicate is always tried once more at the deadline, so a slow machine that
    only gets to check late still sees a condition that has become true. `message` may
    be a callable, read at the deadline (a process's output as it is then, not as it was
    when the wait began).
    """
    deadline = time.monotonic() + timeout
    while True:
        last_try = time.monotonic() >= deadline
        value = predicate()
        if value:
            return value
        if last_try:
            text = message() if callable(message) else message
            detail = f": {text}" if text else ""
            raise AssertionError(f"condition not met within {timeout}s{detail}")
        time.sleep(min(interval, max(0.0, deadline - time.monotonic())))


def work_for(seconds: float) -> None:
    """A job's own work taking `seconds`: the workload a test measures or overlaps (jobs
    running side by side, one finishing after another, work in flight when a fault hits),
    never a wait for something to happen. The one place test work passes time."""
    time.sleep(seconds)


@contextlib.contextmanager
def cpu_hogs() -> Iterator[None]:
    """One busy process per core, at normal priority, for the block: the machine is
    saturated (a fault, like a kill: tests using it are marked chaos)."""
    hogs = [
        subprocess.Popen([sys.executable, "-c", "while True: pass"])
        for _ in range(os.cpu_count() or 2)
    ]
    try:
        yield
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()


async def until_cancelled(deadline: float) -> None:
    """An async job's work that lasts until its task is cancelled; TimeoutError after
    `deadline` seconds when nothing cancelled it."""
    await asyncio.wait_for(asyncio.Event().wait(), deadline)


def new_prefix() -> str:
    """A BullMQ key prefix no other test uses: keys are `<prefix>:<queue>:...`."""
    return "fj" + uuid.uuid4().hex[:10]


def client_id_of(admin: redis.Redis, connection: Any) -> int:
    """The server's id of a redis-py connection, sync or asyncio (for CLIENT KILL), found
    by its port."""
    sock = getattr(connection, "_sock", None)
    if sock is not None:
        port = sock.getsockname()[1]
    else:
        port = connection._writer.get_extra_info("sockname")[1]
    for entry in admin.client_list():
        if entry["addr"].endswith(f":{port}"):
            return int(entry["id"])
    raise AssertionError(f"no client on port {port}")


def query_log_left_by(loop: Callable[[Any], None], meanwhile: Callable[[], None]) -> int:
    """Runs ``loop(stop_event)`` (a service loop: the mirror's, the outbox relay's) in a
    thread of its own while ``meanwhile()`` runs here, stops it, and returns how many
    queries that thread's connection still had in its log at the end (with DEBUG on,
    Django logs each until something clears the log)."""
    import threading

    from django.db import connection

    stop = threading.Event()
    logged: list[int] = []

    def run() -> None:
        try:
            loop(stop)
        finally:
            logged.append(len(connection.queries_log))
            connection.close()

    thread = threading.Thread(target=run)
    thread.start()
    try:
        meanwhile()
    finally:
        stop.set()
        thread.join(10)
    assert logged, "the loop's thread did not end"
    return logged[0]


# --- a database connection whose connect() fails halfway (PostgreSQL) -----------------
MISSING_ROLE = "fj_no_role"


def skip_unless_postgresql(
    why: str = "SET ROLE at connect is PostgreSQL's; SQLite sets up before it keeps one",
) -> None:
    import pytest
    from django.db import connection

    if connection.vendor != "postgresql":
        pytest.skip(why)


# What `current_user_under_a_missing_role` changed: by thread, that thread's connection
# and its settings before (the ``missing_role_threads`` fixture's dict).
RoleChanges = dict[int, tuple[Any, dict[str, Any]]]


def current_user_under_a_missing_role(threads: RoleChanges) -> str:
    """``SELECT current_user`` on this thread's connection. The thread's own settings
    (the first call makes them, and records the thread in `threads`) have PostgreSQL
    assume a role that does not exist at connect, and keep connections open, until
    `restore_roles(threads)`: some of these threads outlive the test (the signal thread,
    asgiref's)."""
    from django.db import connection, connections

    if "assume_role" not in connection.settings_dict["OPTIONS"]:
        # the thread's own wrapper, not the proxy (which is the caller's thread's)
        threads[threading.get_ident()] = (connections["default"], connection.settings_dict)
        settings_dict = dict(connection.settings_dict)
        settings_dict["OPTIONS"] = {**settings_dict["OPTIONS"], "assume_role": MISSING_ROLE}
        settings_dict["CONN_MAX_AGE"] = None
        connection.settings_dict = settings_dict
    with connection.cursor() as cursor:
        cursor.execute("SELECT current_user")
        return cursor.fetchone()[0]


def restore_roles(threads: RoleChanges) -> None:
    """Gives every connection `current_user_under_a_missing_role` changed its settings
    back; one it left connected (half made) is closed by its thread's next tidy."""
    for connection, settings_dict in threads.values():
        connection.settings_dict = settings_dict


def close_and_say_if_open() -> bool:
    from django.db import connection

    is_open = connection.connection is not None
    connection.close()
    return is_open


# --- an outbox entry whose push after the commit failed ----------------------------------
def leave_outbox_entry(queue: Any, name: str, data: Any, job_id: str, prefix: str) -> None:
    """Writes the outbox entry of one job of `queue` as a transaction whose push failed
    leaves it: only the relay pushes it."""
    from dataclasses import asdict

    from flowjobs.models import OutboxEntry

    encoded = queue.encode(name, data, job_id=job_id)
    OutboxEntry.objects.create(
        batch=uuid.uuid4(), prefix=prefix, kind="jobs", jobs=[asdict(encoded)]
    )
