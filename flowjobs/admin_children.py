"""What a failed child means for its parent, and why a parent waits.

BullMQ's rule: a child that fails keeps its parent waiting unless the child carries a
failure policy: fail_parent_on_failure fails the parent, continue_parent_on_failure
releases it, ignore_dependency_on_failure records the failure and drops the
dependency, remove_dependency_on_failure drops it silently. Without one the parent
stays in waiting-children until the child is retried and completes, or removed.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import redis

from .engine.keys import split_job_key
from .models import JobRecord, JobState

# stored policy key -> (the option's Python name, what it did to the parent)
FAILURE_POLICIES: dict[str, tuple[str, str]] = {
    "fpof": ("fail_parent_on_failure", "failed its parent"),
    "cpof": ("continue_parent_on_failure", "parent continued"),
    "idof": ("ignore_dependency_on_failure", "failure ignored"),
    "rdof": ("remove_dependency_on_failure", "failure removed"),
}
NO_POLICY = "no failure policy"
POLICY_NAMES = tuple(name for name, _ in FAILURE_POLICIES.values())


def failure_policy(opts: Any) -> str | None:
    """The stored key of the child's failure policy (fpof, cpof, idof, rdof), or None."""
    if not isinstance(opts, dict):
        return None
    return next((key for key in FAILURE_POLICIES if opts.get(key)), None)


def failure_mark(opts: Any) -> str:
    """How a failed child's failure counts for its parent, in words."""
    policy = failure_policy(opts)
    return FAILURE_POLICIES[policy][1] if policy else NO_POLICY


def counts_as_failure(mark: str) -> bool:
    """Failures the parent feels: it failed with the child, or it waits for it forever."""
    return mark in (NO_POLICY, FAILURE_POLICIES["fpof"][1])


def failed_children_marks(parent_keys: list[str]) -> dict[str, Counter[str]]:
    """parent key -> failed children counted by failure mark (from the mirror)."""
    marks: dict[str, Counter[str]] = {}
    for start in range(0, len(parent_keys), 500):
        rows = JobRecord.objects.filter(
            parent_key__in=parent_keys[start : start + 500], state=JobState.FAILED
        ).values_list("parent_key", "opts")
        for parent_key, opts in rows:
            marks.setdefault(parent_key, Counter())[failure_mark(opts)] += 1
    return marks


@dataclass
class WaitReason:
    """Why a parent in waiting-children has not run yet."""

    pending: list[tuple[str, JobRecord | None]] = field(default_factory=list)
    stuck: list[tuple[str, JobRecord | None]] = field(default_factory=list)
    # pending children that themselves wait forever (a failure further down)
    blocked: list[tuple[str, JobRecord | None]] = field(default_factory=list)

    @property
    def forever(self) -> bool:
        return bool(self.stuck or self.blocked)

    def set_aside_blocked(self, root_key: str) -> None:
        """Moves the pending children that can never finish to ``blocked``."""
        if not self.pending:
            return
        blocked_keys = blocked_for_good({root_key})
        self.blocked = [item for item in self.pending if item[0] in blocked_keys]
        self.pending = [item for item in self.pending if item[0] not in blocked_keys]

    @property
    def policy_names(self) -> tuple[str, ...]:
        return POLICY_NAMES


def failed_in_redis(client: redis.Redis, child_keys: list[str]) -> set[str]:
    """The child keys whose job sits in its queue's failed set (one pipeline)."""
    pipe = client.pipeline(transaction=False)
    checked = []
    for key in child_keys:
        try:
            prefix, queue, job_id = split_job_key(key)
        except ValueError:
            continue
        pipe.zscore(f"{prefix}:{queue}:failed", job_id)
        checked.append(key)
    return {key for key, score in zip(checked, pipe.execute(), strict=True) if score is not None}


def wait_reason(
    unprocessed: list[str], failed: set[str], records: dict[str, JobRecord]
) -> WaitReason:
    reason = WaitReason()
    for key in unprocessed:
        (reason.stuck if key in failed else reason.pending).append((key, records.get(key)))
    return reason


def mirrored_wait_reason(parent: JobRecord, limit: int = 100) -> WaitReason:
    """The same from the mirror alone: children neither completed nor let go by a policy."""
    rows = JobRecord.objects.filter(parent_key=parent.key).exclude(state=JobState.COMPLETED)
    reason = WaitReason()
    for row in rows.order_by("created_at", "pk")[: limit * 2]:
        if row.state != JobState.FAILED:
            reason.pending.append((row.key, row))
        elif failure_policy(row.opts) is None:
            reason.stuck.append((row.key, row))
    return reason


def blocked_for_good(root_keys: set[str], limit: int = 1000) -> set[str]:
    """Keys of jobs in waiting-children that will wait forever: a child, or a child's
    child, ..., failed with no failure policy (each parent up the chain waits on it)."""
    stuck_parents: set[str] = set()
    for root_key in root_keys:
        rows = (
            JobRecord.objects.filter(root_key=root_key, state=JobState.FAILED)
            .exclude(parent_key="")
            .values_list("parent_key", "opts")[:limit]
        )
        stuck_parents |= {parent for parent, opts in rows if failure_policy(opts) is None}
    blocked: set[str] = set()
    frontier = stuck_parents
    for _ in range(64):  # flows are not deeper than this in practice; stop on cycles too
        if not frontier:
            break
        rows = JobRecord.objects.filter(
            key__in=list(frontier)[:limit], state=JobState.WAITING_CHILDREN
        ).values_list("key", "parent_key")
        frontier = set()
        for key, parent_key in rows:
            if key not in blocked:
                blocked.add(key)
                if parent_key:
                    frontier.add(parent_key)
    return blocked
