"""Pruning mirror rows of jobs Redis no longer has."""

from __future__ import annotations

import datetime

from django.db.models.functions import Coalesce
from django.utils import timezone

from ..models import JobRecord


def prune_history(
    age: int | None = None,
    count: int | None = None,
    *,
    now: datetime.datetime | None = None,
) -> int:
    """Delete rows of jobs Redis no longer has beyond the history bounds.

    ``age`` (seconds): rows whose job finished (else was created, else was synced)
    longer ago than that go. ``count``: each queue keeps at most that many rows of
    removed jobs, newest first. Rows of jobs still in Redis are never pruned.
    """
    now = now or timezone.now()
    history = JobRecord.objects.filter(in_redis=False).annotate(
        history_at=Coalesce("finished_at", "created_at", "synced_at")
    )
    deleted = 0
    if age is not None:
        cutoff = now - datetime.timedelta(seconds=age)
        while True:
            pks = list(history.filter(history_at__lt=cutoff).values_list("pk", flat=True)[:5000])
            if not pks:
                break
            deleted += JobRecord.objects.filter(pk__in=pks).delete()[0]
    if count is not None:
        queues = history.values_list("prefix", "queue").distinct().order_by()
        for prefix, queue in list(queues):
            in_queue = history.filter(prefix=prefix, queue=queue).order_by("-history_at", "-pk")
            while True:
                pks = list(in_queue.values_list("pk", flat=True)[count : count + 5000])
                if not pks:
                    break
                deleted += JobRecord.objects.filter(pk__in=pks).delete()[0]
    return deleted
