"""How far the mirror has read each queue's events stream."""

from __future__ import annotations

import redis

from ..models import StreamPosition


def stream_tail(client: redis.Redis, prefix: str, queue: str) -> tuple[str, int | None] | None:
    """(last id, entries added) of a queue's events stream; None when it has none."""
    try:
        info = client.xinfo_stream(f"{prefix}:{queue}:events")
    except redis.ResponseError:
        return None
    added = info.get("entries-added")
    return str(info.get("last-generated-id") or "0-0"), (None if added is None else int(added))


def save_positions(positions: dict[tuple[str, str], tuple[str, int | None]]) -> None:
    if not positions:
        return
    StreamPosition.objects.bulk_create(
        [
            StreamPosition(prefix=prefix, queue=queue, last_id=last_id, entries_read=read)
            for (prefix, queue), (last_id, read) in positions.items()
        ],
        update_conflicts=True,
        unique_fields=["prefix", "queue"],
        update_fields=["last_id", "entries_read", "updated_at"],
    )
