"""Django's database hygiene in flowjobs' long-running threads (job threads, the mirror's and
the outbox relay's loops): what Django does around each request, done around each job or
step, so a thread recovers from a database restart, never holds a connection past its age
and, with DEBUG on, does not keep every query it ever ran."""

from __future__ import annotations

import threading
from functools import partial
from typing import Any

from asgiref.sync import sync_to_async
from django.db import connections
from django.db.backends.signals import connection_created

# The threads (idents) that opened a database connection which may still be open. In
# any other thread close_old_connections has nothing to close, yet costs 1.2 us in a
# tight loop, more between round trips (asgiref's per-thread lookup raises and catches
# for each database alias): twice a job.
_threads_with_connections: set[int] = set()


# The attribute of a connection wrapper naming the DB-API connection whose ``connect()``
# reached ``connection_created``, its end: one that did not is half made.
_FINISHED_CONNECT = "_flowjobs_finished_connect"


def _note_connection(sender: Any, connection: Any, **kwargs: Any) -> None:
    _threads_with_connections.add(threading.get_ident())  # (in the connecting thread)
    setattr(connection, _FINISHED_CONNECT, connection.connection)


def _half_made(connection: Any) -> bool:
    """Django's ``connect()`` opens the connection, then sets it up (autocommit, the
    session's time zone, PostgreSQL's ``SET ROLE``) and sends ``connection_created``
    last; when the set-up fails it keeps the connection, half made, and every later use
    skips the set-up. (Never one in an atomic block: ``connect()`` clears that, and a
    test's transaction holds the connection it began on.)"""
    return (
        connection.connection is not None
        and not connection.in_atomic_block
        and getattr(connection, _FINISHED_CONNECT, None) is not connection.connection
    )


connection_created.connect(_note_connection, dispatch_uid="flowjobs.database.note_connection")


def close_half_made_connections() -> None:
    """Closes this thread's half made connections (see `_half_made`), and only those: the
    thread has no record of them, so the quick test of `tidy_connections` skips them. For
    code that caught an exception of code that may have connected (a signal's receiver,
    a job), wherever it runs, a test's transaction included."""
    for connection in connections.all(initialized_only=True):
        if _half_made(connection):
            connection.close()


def some_thread_holds_a_connection() -> bool:
    return bool(_threads_with_connections)


def tidy_connections(always: bool = False) -> None:
    """What Django does at each request for this thread's connections: closes those that
    are broken, past their ``CONN_MAX_AGE`` or left out of autocommit
    (``close_old_connections()``), and empties their query logs (``reset_queries()``: with
    DEBUG on, every query is logged until then, up to 9,000 a connection). Only in a thread
    that opened a connection since its last tidy left none open; a no-op in any other.

    ``always``: without the quick test, and half made connections closed first (see
    `close_half_made_connections`): before each step of a thread that uses the database
    at every step (the outbox reaper, the relay's and the mirror's loops), where the
    quick test saves nothing, and after a job that raised (a failed ``connect()`` does).
    On CI a test's end blocked database access halfway through the outbox reaper's
    connect; reused, that connection, autocommit never set, took every later delete into
    a transaction no one committed."""
    here = threading.get_ident()
    if always:
        close_half_made_connections()
    elif here not in _threads_with_connections:
        return
    still_open = False
    for connection in connections.all(initialized_only=True):
        connection.queries_log.clear()
        connection.close_if_unusable_or_obsolete()
        still_open = still_open or connection.connection is not None
    if not still_open:
        _threads_with_connections.discard(here)


# Async ORM calls run in asgiref's thread-sensitive thread: an ``async def`` processor's
# job tidies that thread's connections (made once: a wrapper is not free, per job).
tidy_orm_thread = sync_to_async(tidy_connections, thread_sensitive=True)
tidy_orm_thread_always = sync_to_async(
    partial(tidy_connections, always=True), thread_sensitive=True
)
