"""Projector that mirrors jobs from Redis into ``JobRecord`` rows.

Redis is the source of truth; this package only reads it. The projector follows
every queue's events stream (``<prefix>:<queue>:events``) with one XREAD over all
streams, reads the job hashes for the fields events do not carry, and upserts rows
in batches. Each queue's stream position is stored in the same transaction as the
rows, so a restart resumes exactly where the last committed batch stopped. When the
stream was trimmed past that position (or deleted), the queue is reconciled: its
state structures and job hashes are scanned and the rows repaired.

One projector runs per deployment at a time: whoever holds the fenced lease
``<prefix>:flowjobs:mirror-lock`` projects, the others stand by and take over when
it expires (see docs/admin.md). Every transaction of the projector checks the
lease's fence token first, so a projector that lost the lease cannot commit.

A job the mirror cannot store (NUL in its id, an id longer than its column) is
recorded as an ``UnstorableJob`` and logged once; the rest of its batch is stored.

Modules: ``settings``, ``client`` (Redis), ``parsing`` (decoding Redis text),
``observation`` (a job seen in a batch -> a row), ``roots`` (flow roots),
``upsert`` (per-database INSERT ... ON CONFLICT), ``store`` (a batch -> rows),
``unstorable``, ``discovery``, ``positions`` (stream positions), ``reconcile``,
``history`` (pruning), ``projector``, ``repair`` (``syncjobs --once`` under the lease),
``service`` (run, stand by, start in a worker).
The lease itself is ``flowjobs.lease``.
"""

from ..lease import FencedLease, LeaseLost
from .client import redis_client
from .discovery import discover_queues, discover_queues_paced
from .history import prune_history
from .parsing import compare_ids, to_datetime
from .projector import Projector
from .reconcile import ReconcileResult, reconcile, reconcile_queue
from .service import run_mirror, start_in_worker
from .settings import MirrorSettings, check_settings, mirror_settings

# Names this module had before it became a package.
MirrorLock = FencedLease
LockLost = LeaseLost
_compare_ids = compare_ids
_to_datetime = to_datetime

__all__ = [
    "FencedLease",
    "LeaseLost",
    "LockLost",
    "MirrorLock",
    "MirrorSettings",
    "Projector",
    "ReconcileResult",
    "check_settings",
    "discover_queues",
    "discover_queues_paced",
    "mirror_settings",
    "prune_history",
    "reconcile",
    "reconcile_queue",
    "redis_client",
    "run_mirror",
    "start_in_worker",
]
