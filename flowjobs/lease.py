"""A lease in Redis with a fence token, and the database check that enforces it.

Some work must have one doer per deployment at a time: the mirror projector, the
outbox relay. Whoever holds the lease does it; the others stand by and take over
when it is released or expires. An expiring lease alone is not enough: a holder
paused (GC, SIGSTOP, a slow disk) past its TTL wakes up still believing it holds
the lease and commits what it read before the pause, over the newer holder's
writes. The fence token stops that: it grows every time the lease changes hands,
and every database transaction of the holder checks it first.

Usage::

    lease = FencedLease(client, "bull:flowjobs:mirror-lock", ttl_ms=30_000)
    if lease.acquire(floor=highest_fence(lease.key)):
        while working:
            lease.keep()                              # LeaseLost once it is gone
            with transaction.atomic():
                ...                                   # the batch's writes
                check_fence(lease.key, lease.fence)   # LeaseLost: all rolled back

    lease.release()

Redis keys: ``<key>`` holds the holder's token (``SET NX PX``); ``<key>:fence`` is
a counter INCRed by every successful take, ``lease.fence`` is the value this holder
got. On Redis Cluster both keys share a slot when ``key`` carries a hash tag.

Database: one ``LeaseFence`` row per lease key holds the highest fence that has
written. ``check_fence`` runs ``UPDATE ... SET fence = mine WHERE fence <= mine``
as the transaction's last statement, just before the commit. Once a newer holder
has committed (or holds the row, about to commit) an older holder's update matches
zero rows, raises ``LeaseLost`` and its whole transaction rolls back. Checking last
keeps the row locked only for the commit itself: a holder paused in the middle of
a transaction does not block the fenced writes of the one that took over.
``acquire(floor=...)`` lifts the Redis counter above the database's highest fence,
so a Redis that lost its data (restart without persistence) cannot hand out a
fence the database would refuse forever.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import redis

__all__ = ["FencedLease", "LeaseLost", "check_fence", "fenced_atomic", "highest_fence"]

# KEYS: lease key, fence counter. ARGV: token, ttl ms, floor.
# Returns this holder's fence, or 0 when another holder has the lease.
_ACQUIRE_SCRIPT = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  local fence = redis.call('INCR', KEYS[2])
  local floor = tonumber(ARGV[3])
  if fence <= floor then
    fence = floor + 1
    redis.call('SET', KEYS[2], fence)
  end
  return fence
end
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return tonumber(redis.call('GET', KEYS[2]) or '0')
end
return 0
"""
_RENEW_SCRIPT = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
_RELEASE_SCRIPT = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class LeaseLost(Exception):
    """This holder no longer holds the lease (expired, taken over, or fenced out)."""


class FencedLease:
    """One holder per ``key`` at a time, with a fence token that grows on every take."""

    def __init__(
        self, client: redis.Redis, key: str, ttl_ms: int, token: str | None = None
    ) -> None:
        self.client = client
        self.key = key
        self.fence_key = f"{key}:fence"
        self.ttl_ms = ttl_ms
        self.token = token or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"
        self.fence = 0  # 0 until acquired
        self._renewed_at = 0.0
        self._acquire = client.register_script(_ACQUIRE_SCRIPT)
        self._renew = client.register_script(_RENEW_SCRIPT)
        self._release = client.register_script(_RELEASE_SCRIPT)

    def acquire(self, floor: int = 0) -> bool:
        """Take the lease if it is free (or extend it if it is already ours).

        ``floor``: the highest fence the guarded store has seen (``highest_fence``);
        a new take gets a fence above it.
        """
        fence = int(
            self._acquire(keys=[self.key, self.fence_key], args=[self.token, self.ttl_ms, floor])
        )
        if not fence:
            return False
        self.fence = fence
        self._renewed_at = time.monotonic()
        return True

    def renew(self) -> bool:
        ok = bool(self._renew(keys=[self.key], args=[self.token, self.ttl_ms]))
        if ok:
            self._renewed_at = time.monotonic()
        return ok

    def keep(self) -> None:
        """Renew when a third of the TTL has passed; raise LeaseLost if it is gone."""
        due = time.monotonic() - self._renewed_at >= self.ttl_ms / 3000
        if due and not self.renew():
            raise LeaseLost(f"lease {self.key} is no longer held by {self.token}")

    def release(self) -> bool:
        """Give the lease up if it is still ours (True when it was)."""
        return bool(self._release(keys=[self.key], args=[self.token]))

    def wait_hint(self) -> float:
        """Seconds to wait before trying again to take the lease.

        At most a second, so that a standby notices a lease released by a clean
        shutdown at once; sooner when the holder's TTL ends first.
        """
        try:
            remaining = self.client.pttl(self.key)
        except redis.RedisError:
            remaining = -1
        longest = min(1.0, self.ttl_ms / 3000)
        if remaining is None or remaining < 0:
            return longest
        return max(0.05, min(longest, remaining / 1000))


def highest_fence(name: str) -> int:
    """The highest fence that has written under lease ``name`` (0 if none)."""
    from .models import LeaseFence

    return LeaseFence.objects.filter(name=name).values_list("fence", flat=True).first() or 0


def check_fence(name: str, fence: int) -> None:
    """Admit the current transaction's writes for the holder of ``fence``, or raise.

    Call last inside ``transaction.atomic()``, after the writes it guards. Raises
    ``LeaseLost`` (so the transaction rolls back) when a holder with a higher fence
    has written, or is committing.
    """
    from .models import LeaseFence

    row = LeaseFence.objects.filter(name=name, fence__lte=fence)
    if row.update(fence=fence):
        return
    # No row yet (first write under this name), or a newer holder wrote.
    LeaseFence.objects.bulk_create([LeaseFence(name=name, fence=fence)], ignore_conflicts=True)
    if row.update(fence=fence):
        return
    raise LeaseLost(
        f"lease {name}: fence {fence} is older than {highest_fence(name)}, which has written"
    )


@contextmanager
def fenced_atomic(lease: FencedLease | None) -> Iterator[None]:
    """``transaction.atomic()`` that commits only while ``lease`` is the newest holder
    to write (``check_fence`` last); no check when ``lease`` is None."""
    from django.db import transaction

    with transaction.atomic():
        yield
        if lease is not None:
            check_fence(lease.key, lease.fence)
