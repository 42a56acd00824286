"""Transaction-safe enqueueing: jobs written to Redis only when the database commits.

    from flowjobs.enqueue import enqueue, enqueue_bulk, enqueue_flow

    with transaction.atomic():
        order = Order.objects.create(...)
        enqueue("orders", "confirm", {"order": order.pk}, on_commit=True)

With ``on_commit=True`` (or ``None`` and the ``ENQUEUE_ON_COMMIT`` setting on) the
write is handed to ``transaction.on_commit``: a worker never sees a job whose rows
are not committed yet, and a rolled-back transaction enqueues nothing. Outside an
atomic block Django runs on-commit callbacks at once, so the job is written at once.

Validation is never deferred: names, options and data are checked (by the engine's
``Queue.encode``) when you call, and a bad job raises ``InvalidJobOptions`` /
``InvalidJobData`` before the transaction commits. Only the Redis write waits.

The helpers return the added ``Job`` (or flow ``JobNode``) when the write happened
during the call, and ``None`` when it was deferred to the commit; pass ``job_id=``
when the caller needs the id up front.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from django.db import transaction

from . import conf
from .engine import Flow, Job, JobNode

__all__ = ["enqueue", "enqueue_bulk", "enqueue_flow"]


def _defer(on_commit: bool | None) -> bool:
    if on_commit is None:
        return conf.settings().ENQUEUE_ON_COMMIT
    return bool(on_commit)


def _run(write: Callable[[], Any], on_commit: bool | None, using: str | None) -> Any:
    if not _defer(on_commit):
        return write()
    connection = transaction.get_connection(using)
    if not connection.in_atomic_block:
        return write()
    transaction.on_commit(write, using=using)
    return None


def enqueue(
    queue_name: str,
    name: str,
    data: Any = None,
    *,
    on_commit: bool | None = None,
    using: str | None = None,
    **options: Any,
) -> Job | None:
    """Adds job ``name`` to ``queue_name`` (options as ``Queue.add``), at commit when
    deferred. Returns the Job, or None when the write waits for the commit."""
    queue = conf.get_queue(queue_name)
    encoded = queue.encode(name, data, **options)
    return _run(lambda: queue.add_encoded([encoded])[0], on_commit, using)


def enqueue_bulk(
    queue_name: str,
    jobs: Iterable[Mapping[str, Any]],
    *,
    on_commit: bool | None = None,
    using: str | None = None,
) -> list[Job] | None:
    """Adds ``[{"name", "data", "opts"}, ...]`` to one queue atomically (all or none)."""
    queue = conf.get_queue(queue_name)
    encoded = queue.encode_bulk(jobs)
    if not encoded:
        return []
    return _run(lambda: queue.add_encoded(encoded), on_commit, using)


def enqueue_flow(
    flow: Flow | Mapping[str, Any],
    *,
    parent: Mapping[str, Any] | None = None,
    on_commit: bool | None = None,
    using: str | None = None,
) -> JobNode | None:
    """Adds a flow (a ``Flow`` tree or the dict form) with the configured FlowProducer,
    at commit when deferred. Returns the JobNode tree, or None when deferred."""
    producer = conf.get_flow_producer()
    encoded = producer.encode([flow], dict(parent) if parent else None)  # type: ignore[list-item]
    return _run(lambda: producer.add_encoded(encoded)[0], on_commit, using)
