"""A reconcile on demand (``manage.py syncjobs --once``) under the mirror's lease.

Only the holder of the mirror's fenced lease writes rows. A reconcile run beside a
projector without it could commit a job's row as it read it before the projector
committed a newer state, and that row would stay wrong until the next full reconcile.
So ``reconcile_with_lease`` takes the lease and reconciles itself when no projector
holds it, and otherwise asks the holder: it pushes a request onto
``<lock key>:reconcile`` and waits for the answer on ``<lock key>:reconciled:<id>``.
The projector looks for requests about once a second (``answer_reconcile_requests``),
reconciles in its fenced transactions, and carries on from its stream positions, so
what changed during the scan is applied after it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import time
import uuid
from collections.abc import Iterable

import redis

from ..lease import FencedLease, fenced_atomic, highest_fence
from .reconcile import ReconcileResult, reconcile
from .settings import MirrorSettings

__all__ = ["ReconcileNotAnswered", "answer_reconcile_requests", "reconcile_with_lease"]

# How long an answer waits in Redis for the command that asked (it may have given up).
_ANSWER_TTL_S = 3600


class ReconcileNotAnswered(Exception):
    """The projector holding the lease did not reconcile within the time given."""


def _requests_key(lock_key: str) -> str:
    return f"{lock_key}:reconcile"


def _answer_key(lock_key: str, request_id: str) -> str:
    return f"{lock_key}:reconciled:{request_id}"


def reconcile_with_lease(
    client: redis.Redis,
    config: MirrorSettings,
    queues: Iterable[str] | None = None,
    *,
    timeout: float = 900.0,
) -> tuple[ReconcileResult, str | None]:
    """Reconcile every queue (or ``queues``) as the mirror's only writer.

    Returns the result and the token of the projector that did it (None: done here,
    under the lease taken for it). Raises ReconcileNotAnswered when a projector holds
    the lease and has not answered within ``timeout`` seconds.
    """
    names = sorted(set(queues)) if queues is not None else None
    lease = FencedLease(client, config.lock_key, config.lock_ttl_ms)
    request_id = uuid.uuid4().hex
    request = json.dumps({"id": request_id, "queues": names})
    asked = False
    deadline = time.monotonic() + timeout
    try:
        while True:
            if lease.acquire(floor=highest_fence(lease.key)):
                if asked:
                    client.lrem(_requests_key(lease.key), 0, request)  # the holder is gone
                return _reconcile_holding(lease, config.prefix, names), None
            if not asked:
                client.rpush(_requests_key(lease.key), request)
                asked = True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                holder = client.get(lease.key) or "(none)"
                client.lrem(_requests_key(lease.key), 0, request)
                raise ReconcileNotAnswered(
                    f"the projector holding the mirror's lease ({holder}) did not reconcile "
                    f"within {timeout:g} s"
                )
            reply = client.blpop([_answer_key(lease.key, request_id)], timeout=min(remaining, 1.0))
            if reply is not None:
                answer = json.loads(reply[1])
                return ReconcileResult(**answer["result"]), answer["by"]
    finally:
        lease.release()


def _reconcile_holding(
    lease: FencedLease, prefix: str, queues: list[str] | None, store_positions: bool = True
) -> ReconcileResult:
    """A full reconcile by the holder of ``lease``: fenced transactions, the lease renewed
    as it goes."""
    return reconcile(
        lease.client,
        prefix,
        queues,
        store_positions=store_positions,
        heartbeat=lease.keep,
        atomic=lambda: fenced_atomic(lease),
    )


def answer_reconcile_requests(lease: FencedLease, prefix: str) -> int:
    """The lease holder's side: runs the reconciles asked for since the last call (a
    full one of the queues named, or of every queue) and answers each. Returns how
    many it answered. Stream positions stay as they are: the projector applies what
    changed during the scan after it."""
    client = lease.client
    answered = 0
    while raw := client.lpop(_requests_key(lease.key)):
        try:
            request = json.loads(raw)
            request_id = str(request["id"])
            queues = request.get("queues")
        except (ValueError, TypeError, KeyError):
            continue  # not a request of ours
        try:
            result = _reconcile_holding(lease, prefix, queues, store_positions=False)
        except BaseException:
            # Lease lost (or anything else) before the answer: back at the head of the
            # list for the next holder, or the asking command would wait out its timeout.
            with contextlib.suppress(redis.RedisError):  # the first error is the one to see
                client.lpush(_requests_key(lease.key), raw)
            raise
        answer = json.dumps({"result": dataclasses.asdict(result), "by": lease.token})
        pipe = client.pipeline(transaction=True)
        pipe.rpush(_answer_key(lease.key, request_id), answer)
        pipe.expire(_answer_key(lease.key, request_id), _ANSWER_TTL_S)
        pipe.execute()
        answered += 1
    return answered
