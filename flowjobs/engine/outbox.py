"""Pushing a transactional outbox entry: the Redis half (no Django).

An outbox entry (jobs or a flow written to a SQL table in the caller's transaction)
is pushed with the ordinary add script plus a *receipt* and a *deadline*:

- the receipt, a key set in the same script call that adds the jobs, makes a push
  repeated after a crash or by a second pusher add nothing, even when the jobs of
  the first push already ran and were removed (``remove_on_complete``);
- the deadline (Redis clock) stops a pusher that read the entry long ago and was
  paused or cut off from pushing it after the receipt is gone.

Receipts live while their entry may still be in the database: the pusher shortens
a receipt to ``lease`` once the entry's row is deleted. A pusher takes the Redis
time *before* it reads the entry, so any copy read before the deletion is past its
deadline by the time the shortened receipt expires.
"""

from __future__ import annotations

from dataclasses import dataclass

import redis

from .errors import FlowJobsError

__all__ = [
    "AlreadyPushed",
    "PushReceipt",
    "PushTooLate",
    "receipt_key",
    "redis_time_ms",
    "shorten_receipts",
]


class AlreadyPushed(FlowJobsError):
    """The outbox entry was pushed before (its receipt exists): nothing was written."""


class PushTooLate(FlowJobsError):
    """The pusher's deadline passed before the push reached Redis: nothing was written."""


@dataclass(frozen=True)
class PushReceipt:
    """What turns an add into the push of one outbox entry."""

    key: str  # receipt key, from receipt_key()
    deadline_ms: int  # Redis time after which this push must not happen
    ttl_ms: int  # receipt lifetime while the entry's row may still exist

    def keys(self) -> list[str]:
        return [self.key]

    def args(self) -> list[int]:
        return [self.deadline_ms, self.ttl_ms]


def receipt_key(prefix: str, entry_key: str) -> str:
    """The receipt key of outbox entry ``entry_key`` (same hash tag as the queues)."""
    return f"{prefix}:flowjobs:outbox:{entry_key}"


_TIME_SCRIPT = "return redis.call('TIME')"


def redis_time_ms(client: redis.Redis, prefix: str) -> int:
    """Redis's clock in ms, read on the server that holds ``prefix``'s receipts (on a
    Cluster, the node of its hash slot): the clock the add script checks deadlines on."""
    seconds, micros = client.eval(_TIME_SCRIPT, 1, receipt_key(prefix, "clock"))
    return int(seconds) * 1000 + int(micros) // 1000


def shorten_receipts(client: redis.Redis, keys: list[str], lease_ms: int) -> None:
    """After the entries' rows are deleted: keep each receipt only ``lease_ms`` longer."""
    if not keys:
        return
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.pexpire(key, lease_ms)
    pipe.execute()
