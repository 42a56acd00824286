"""Which queues live under a prefix."""

from __future__ import annotations

from collections.abc import Iterable

import redis
from django.utils import timezone

from .unstorable import queue_problem
from .unstorable import record as record_unstorable


def discover_queues(client: redis.Redis, prefix: str) -> list[str]:
    """Queue names under ``prefix`` that have a ``meta`` hash or an ``events`` stream."""
    found: set[str] = set()
    head = f"{prefix}:"
    for suffix in (":meta", ":events"):
        for key in client.scan_iter(match=f"{_escape_glob(prefix)}:*{suffix}", count=1000):
            if not key.startswith(head) or not key.endswith(suffix):
                continue
            queue = key[len(head) : -len(suffix)]
            if queue and ":" not in queue:
                found.add(queue)
    return sorted(found)


def _escape_glob(text: str) -> str:
    return "".join("\\" + ch if ch in "*?[]\\" else ch for ch in text)


def mirrorable_queues(client: redis.Redis, prefix: str, names: Iterable[str]) -> list[str]:
    """``names`` without the queues whose names the mirror cannot store.

    Those are recorded as unstorable (logged the first time), so that the stream
    position of one such queue never stops the others.
    """
    keep, refused = [], []
    for queue in names:
        problem = queue_problem(prefix, queue)
        if problem:
            refused.append((prefix, queue, "", problem))
        else:
            keep.append(queue)
    if refused:
        record_unstorable(refused, timezone.now())
    return keep
