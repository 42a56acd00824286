"""Job groups: per-group concurrency and rate limits with round-robin between groups.

A job added with `group={"id": "tenant-42"}` waits in its group's list instead of
`wait`; workers take the groups in turn (one job per group per round, ungrouped
jobs counting as one more group), skipping a group while it is at its concurrency
or over its rate limit. The limits are queue settings kept in the queue's meta
hash, so every worker applies the same ones. See docs/groups.md for the layout and
what BullMQ workers (which know no groups) see.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .errors import FlowJobsError

if TYPE_CHECKING:
    from .queue import Queue

__all__ = [
    "GroupInfo",
    "get_group",
    "get_groups",
    "group_settings",
    "set_group_limits",
]

PLAIN_TURN = ":plain"


@dataclass(frozen=True)
class GroupInfo:
    """A group with jobs waiting or running."""

    id: str
    waiting: int
    active: int
    state: str  # "ready" (has a turn), "maxed" (at its concurrency), "limited" (rate limit)
    limited_until: int | None = None


def _check_positive(what: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise FlowJobsError(f"{what} must be a positive integer, got {value!r}")
    return value


def set_group_limits(
    queue: Queue,
    concurrency: int | None = None,
    max_jobs: int | None = None,
    duration_ms: int | None = None,
) -> None:
    """Writes the queue's group limits (only those given)."""
    fields: dict[str, int] = {}
    if concurrency is not None:
        fields["groupConcurrency"] = _check_positive("group concurrency", concurrency)
    if max_jobs is not None or duration_ms is not None:
        fields["groupMax"] = _check_positive("group limiter max", max_jobs)
        fields["groupDuration"] = _check_positive("group limiter duration", duration_ms)
    if fields:
        queue.client.hset(queue.keys.meta, mapping=fields)


def group_settings(queue: Queue) -> dict[str, int | None]:
    concurrency, max_jobs, duration = queue.client.hmget(
        queue.keys.meta, "groupConcurrency", "groupMax", "groupDuration"
    )
    return {
        "concurrency": int(concurrency) if concurrency else None,
        "max": int(max_jobs) if max_jobs else None,
        "duration": int(duration) if duration else None,
    }


def _group_ids(queue: Queue) -> tuple[list[str], set[str], dict[str, int]]:
    pipe = queue.client.pipeline(transaction=False)
    pipe.zrange(queue.keys.key("groups:ready"), 0, -1)
    pipe.smembers(queue.keys.key("groups:maxed"))
    pipe.zrange(queue.keys.key("groups:limited"), 0, -1, withscores=True)
    ready, maxed, limited = pipe.execute()
    return (
        [gid for gid in ready if gid != PLAIN_TURN],
        set(maxed),
        {gid: int(score) for gid, score in limited},
    )


def get_groups(queue: Queue) -> list[GroupInfo]:
    """Groups that have jobs waiting (or are held back), in the order of their turns."""
    ready, maxed, limited = _group_ids(queue)
    ordered = ready + sorted(maxed - set(ready)) + sorted(set(limited) - set(ready) - maxed)
    pipe = queue.client.pipeline(transaction=False)
    for gid in ordered:
        pipe.llen(queue.keys.key(f"group:{gid}:wait"))
        pipe.scard(queue.keys.key(f"group:{gid}:active"))
    counts = pipe.execute()
    groups = []
    for index, gid in enumerate(ordered):
        state = "limited" if gid in limited else "maxed" if gid in maxed else "ready"
        groups.append(
            GroupInfo(gid, counts[2 * index], counts[2 * index + 1], state, limited.get(gid))
        )
    return groups


def get_group(queue: Queue, group_id: str) -> GroupInfo:
    pipe = queue.client.pipeline(transaction=False)
    pipe.llen(queue.keys.key(f"group:{group_id}:wait"))
    pipe.scard(queue.keys.key(f"group:{group_id}:active"))
    pipe.sismember(queue.keys.key("groups:maxed"), group_id)
    pipe.zscore(queue.keys.key("groups:limited"), group_id)
    waiting, active, maxed, until = pipe.execute()
    state = "limited" if until is not None else "maxed" if maxed else "ready"
    return GroupInfo(group_id, waiting, active, state, int(until) if until else None)
