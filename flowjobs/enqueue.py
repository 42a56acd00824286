"""Transaction-safe enqueueing: a committed row always gets its job (the outbox).

    from flowjobs.enqueue import enqueue, enqueue_bulk, enqueue_flow

    with transaction.atomic():
        order = Order.objects.create(...)
        enqueue("orders", "confirm", {"order": order.pk}, on_commit=True)

With ``on_commit=True`` (or ``None`` and the ``ENQUEUE_ON_COMMIT`` setting on) the job,
the bulk add or the whole flow is written as one outbox row in the same database
transaction (``using=`` picks the database) and pushed to Redis right after the
commit; if Redis cannot take it then (refused, hung, full) the relay pushes it later
(``flowjobs.outbox``, docs/outbox.md). A worker never sees a job whose rows are not
committed, a rolled-back transaction enqueues nothing, and the caller never gets an
exception after COMMIT because Redis is unavailable.

Validation is never deferred: names, options and data are checked (by the engine's
``Queue.encode``) when you call, and a bad job raises ``InvalidJobOptions`` /
``InvalidJobData`` before anything is written. Jobs without a ``job_id`` get one now
(a UUID), so a repeated push never adds a job twice.

The helpers return the added ``Job`` (or flow ``JobNode``) when it reached Redis
during the call (``on_commit=False``, or outside a transaction while Redis answers),
and ``None`` when it waits for the commit or the relay; pass ``job_id=`` when the
caller needs the id up front. ``aenqueue``, ``aenqueue_bulk`` and ``aenqueue_flow``
are the same for async code.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from asgiref.sync import sync_to_async

from . import conf, outbox
from .engine import Flow, Job, JobNode
from .outbox_entry import OutboxKind

__all__ = [
    "aenqueue",
    "aenqueue_bulk",
    "aenqueue_flow",
    "enqueue",
    "enqueue_bulk",
    "enqueue_flow",
]


def _defer(on_commit: bool | None) -> bool:
    if on_commit is None:
        return conf.settings().ENQUEUE_ON_COMMIT
    return bool(on_commit)


def _with_id(options: dict[str, Any]) -> dict[str, Any]:
    if options.get("job_id") is None:
        options["job_id"] = outbox.new_job_id()
    return options


def enqueue(
    queue_name: str,
    name: str,
    data: Any = None,
    *,
    on_commit: bool | None = None,
    using: str | None = None,
    **options: Any,
) -> Job | None:
    """Adds job ``name`` to ``queue_name`` (options as ``Queue.add``), through the outbox
    when deferred. Returns the Job, or None when it waits for the commit or the relay."""
    queue = conf.get_queue(queue_name)
    if not _defer(on_commit):
        return queue.add_encoded([queue.encode(name, data, **options)])[0]
    encoded = queue.encode(name, data, **_with_id(options))
    added = outbox.stage(OutboxKind.JOBS, [encoded], using)
    return added[0] if added else None


def enqueue_bulk(
    queue_name: str,
    jobs: Iterable[Mapping[str, Any]],
    *,
    on_commit: bool | None = None,
    using: str | None = None,
) -> list[Job] | None:
    """Adds ``[{"name", "data", "opts"}, ...]`` to one queue atomically (all or none)."""
    queue = conf.get_queue(queue_name)
    if not _defer(on_commit):
        encoded = queue.encode_bulk(jobs)
        return queue.add_encoded(encoded) if encoded else []
    items: list[Any] = []
    for item in jobs:
        if isinstance(item, tuple):  # (name, data, opts), as Queue.add_bulk takes
            item = dict(zip(("name", "data", "opts"), item, strict=False))
        if isinstance(item, Mapping) and isinstance(item.get("opts") or {}, Mapping):
            item = {**item, "opts": _with_id(dict(item.get("opts") or {}))}
        items.append(item)
    encoded = queue.encode_bulk(items)
    if not encoded:
        return []
    return outbox.stage(OutboxKind.JOBS, encoded, using)


def enqueue_flow(
    flow: Flow | Mapping[str, Any],
    *,
    parent: Mapping[str, Any] | None = None,
    on_commit: bool | None = None,
    using: str | None = None,
) -> JobNode | None:
    """Adds a flow (a ``Flow`` tree or the dict form) with the configured FlowProducer,
    as one outbox entry when deferred (one atomic add in Redis either way). Returns the
    JobNode tree, or None when it waits for the commit or the relay. Every node gets its
    job id now (the FlowProducer does that for nodes without one)."""
    producer = conf.get_flow_producer()
    encoded = producer.encode([flow], dict(parent) if parent else None)  # type: ignore[list-item]
    if not _defer(on_commit):
        return producer.add_encoded(encoded)[0]
    added = outbox.stage(OutboxKind.FLOW, encoded, using)
    return added[0] if added else None


aenqueue = sync_to_async(enqueue)
aenqueue.__doc__ = "``enqueue`` for async code (runs in Django's sync thread)."
aenqueue_bulk = sync_to_async(enqueue_bulk)
aenqueue_bulk.__doc__ = "``enqueue_bulk`` for async code."
aenqueue_flow = sync_to_async(enqueue_flow)
aenqueue_flow.__doc__ = "``enqueue_flow`` for async code."
