"""Pruning mirror rows of jobs Redis no longer has."""

from __future__ import annotations

import datetime

from django.db.models import F, QuerySet
from django.db.models.functions import Coalesce
from django.utils import timezone

from ..models import JobRecord, UnstorableJob


def prune_history(
    age: int | None = None,
    count: int | None = None,
    *,
    now: datetime.datetime | None = None,
) -> int:
    """Delete rows of jobs Redis no longer has beyond the history bounds.

    ``age`` (seconds): rows whose job finished (else was created, else was synced)
    longer ago than that go. ``count``: each queue keeps at most that many rows of
    removed jobs, newest first. Rows of jobs still in Redis are never pruned. The same
    bounds apply to the UnstorableJob records, by when the mirror last saw each.
    """
    now = now or timezone.now()
    history = JobRecord.objects.filter(in_redis=False).annotate(
        history_at=Coalesce("finished_at", "created_at", "synced_at")
    )
    unstorable = UnstorableJob.objects.annotate(history_at=F("last_seen"))
    deleted = 0
    for rows in (history, unstorable):
        if age is not None:
            deleted += _delete(rows.filter(history_at__lt=now - datetime.timedelta(seconds=age)))
        if count is not None:
            for prefix, queue in list(rows.values_list("prefix", "queue").distinct().order_by()):
                in_queue = rows.filter(prefix=prefix, queue=queue).order_by("-history_at", "-pk")
                deleted += _delete(in_queue, keep=count)
    return deleted


def _delete(rows: QuerySet, keep: int = 0) -> int:
    """Delete ``rows`` but the first ``keep``, 5,000 at a time."""
    deleted = 0
    while True:
        pks = list(rows.values_list("pk", flat=True)[keep : keep + 5000])
        if not pks:
            return deleted
        # rows.filter, not the bare ids: the DELETE checks the bounds again, so a row the
        # mirror found in Redis again since the SELECT stays
        deleted += rows.filter(pk__in=pks).delete()[0]
