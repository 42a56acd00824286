"""Which queues live under a prefix."""

from __future__ import annotations

import time
from collections.abc import Iterable

import redis
from django.utils import timezone

from .unstorable import queue_problem
from .unstorable import record as record_unstorable

# One SCAN pass finds both kinds of key: "meta" and "events" both match [me][ev][te][an]*
# (the names are checked exactly below). A pass costs Redis about a millisecond per
# thousand keys, and a queue that keeps its finished jobs has a key per job.
_QUEUE_KEY_TAIL = ":[me][ev][te][an]*"
_QUEUE_KEY_SUFFIXES = (":meta", ":events")
# A pass is followed by at least this many times its own length without one.
DISCOVERY_PAUSE_FACTOR = 100


def discover_queues_paced(
    client: redis.Redis, prefix: str, every: float
) -> tuple[list[str], float]:
    """``discover_queues``, and the monotonic time the next pass is due: ``every`` seconds
    on, or more over a keyspace big enough that passes that often would cost Redis over
    1% of its time (at least DISCOVERY_PAUSE_FACTOR times as long as this one took)."""
    started = time.monotonic()
    found = discover_queues(client, prefix)
    took = time.monotonic() - started
    return found, started + max(every, took * DISCOVERY_PAUSE_FACTOR)


def discover_queues(client: redis.Redis, prefix: str) -> list[str]:
    """Queue names under ``prefix`` that have a ``meta`` hash or an ``events`` stream."""
    found: set[str] = set()
    head = f"{prefix}:"
    for key in client.scan_iter(match=f"{_escape_glob(prefix)}:*{_QUEUE_KEY_TAIL}", count=1000):
        if not key.startswith(head):
            continue
        for suffix in _QUEUE_KEY_SUFFIXES:
            if key.endswith(suffix):
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
