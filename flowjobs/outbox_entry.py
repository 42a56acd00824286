"""The outbox table: jobs and flows waiting to be pushed to Redis.

A row is written by ``flowjobs.enqueue`` in the caller's own database transaction
and deleted once Redis has confirmed the push (``flowjobs.outbox``). The model lives
in its own module, imported by ``flowjobs.models``.
"""

from __future__ import annotations

import uuid

from django.db import models
from django.utils import timezone


class OutboxKind(models.TextChoices):
    JOBS = "jobs", "jobs"  # one job, or an enqueue_bulk (one add, all or none)
    FLOW = "flow", "flow"  # one flow tree (one atomic add of every node)


class OutboxEntry(models.Model):
    """One enqueue waiting for its push: the encoded jobs, job ids included."""

    id = models.BigAutoField(primary_key=True)  # enqueue order
    key = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)  # receipt name
    # The transaction that wrote it: entries of one batch are pushed in id order.
    batch = models.UUIDField(editable=False)
    prefix = models.CharField(max_length=100)  # the Redis key prefix it is pushed under
    kind = models.CharField(max_length=8, choices=OutboxKind.choices)
    jobs = models.JSONField()  # [EncodedJob fields, ...] in add-script order
    created_at = models.DateTimeField(default=timezone.now)
    attempts = models.PositiveIntegerField(default=0)  # failed pushes so far
    last_error = models.TextField(blank=True, default="")

    class Meta:
        verbose_name = "outbox entry"
        verbose_name_plural = "outbox entries"
        ordering = ("id",)
        indexes = (
            models.Index(fields=["prefix", "id"], name="flowjobs_outbox_prefix_id"),
            models.Index(fields=["batch"], name="flowjobs_outbox_batch"),
        )

    def __str__(self) -> str:
        return f"outbox entry {self.pk} ({self.kind}, {len(self.jobs)} job(s))"
