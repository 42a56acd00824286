"""Django's database hygiene in flowjobs' long-running threads (job threads, the mirror's and
the outbox relay's loops): what Django does around each request, done around each job or
step, so a thread recovers from a database restart, never holds a connection past its age
and, with DEBUG on, does not keep every query it ever ran."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from asgiref.sync import sync_to_async
from django.db import connections
from django.db.backends.signals import connection_created

# The threads (idents) that opened a database connection which may still be open. In
# any other thread close_old_connections has nothing to close, yet costs 1.2 us in a
# tight loop, more between round trips (asgiref's per-thread lookup raises and catches
# for each database alias): twice a job.
_threads_with_connections: set[int] = set()


def _note_connection(sender: Any, connection: Any, **kwargs: Any) -> None:
    _threads_with_connections.add(threading.get_ident())  # (in the connecting thread)


connection_created.connect(_note_connection, dispatch_uid="flowjobs.database.note_connection")


def some_thread_holds_a_connection() -> bool:
    return bool(_threads_with_connections)


def tidy_connections(always: bool = False) -> None:
    """What Django does at each request for this thread's connections: closes those that
    are broken, past their ``CONN_MAX_AGE`` or left out of autocommit
    (``close_old_connections()``), and empties their query logs (``reset_queries()``: with
    DEBUG on, every query is logged until then, up to 9,000 a connection). Only in a thread
    that opened a connection since its last tidy left none open; a no-op in any other.

    ``always``: in every case, for a thread that uses the database at each step (the
    outbox reaper, the relay's and the mirror's loops), where the quick test saves
    nothing. A thread has no record of a connection whose ``connect()`` failed after
    opening it (``connection_created`` is sent at its end): Django keeps such a half
    made connection, autocommit not set: see `database_step`, which such threads use;
    job threads keep the quick test (see the CHANGELOG)."""
    here = threading.get_ident()
    if not always and here not in _threads_with_connections:
        return
    still_open = False
    for connection in connections.all(initialized_only=True):
        connection.queries_log.clear()
        connection.close_if_unusable_or_obsolete()
        still_open = still_open or connection.connection is not None
    if not still_open:
        _threads_with_connections.discard(here)


@contextmanager
def database_step() -> Iterator[None]:
    """One step of a thread that uses the database at every step (the outbox reaper, the
    relay's and the mirror's loops): its connections are tidied before the step, whatever
    was recorded of them, and closed when the step fails. Django's ``connect()`` can fail
    after it opened the connection, before it set autocommit, and keeps that half made
    connection; reused, every later write would go into a transaction no one commits
    (seen on CI, where a test's end blocked database access halfway through the outbox
    reaper's connect, and the reaper's deletes stayed uncommitted)."""
    tidy_connections(always=True)
    try:
        yield
    except Exception:
        connections.close_all()  # this thread's
        raise


# Async ORM calls run in asgiref's thread-sensitive thread: an ``async def`` processor's
# job tidies that thread's connections (made once: a wrapper is not free, per job).
tidy_orm_thread = sync_to_async(tidy_connections, thread_sensitive=True)
