"""SQL mirror of the jobs and flows that live in Redis.

Redis is the only source of truth. These rows are a projection written by
``flowjobs.mirror`` (the events-stream projector and ``reconcile``): history that
outlives Redis retention, fast filtering for the admin, joins with the project's
own tables. Nothing else writes them and the engine never reads them; admin
actions go through the engine.
"""

from __future__ import annotations

from django.db import models


class JobState(models.TextChoices):
    WAITING = "waiting", "waiting"
    PRIORITIZED = "prioritized", "prioritized"
    DELAYED = "delayed", "delayed"
    WAITING_CHILDREN = "waiting-children", "waiting-children"
    ACTIVE = "active", "active"
    COMPLETED = "completed", "completed"
    FAILED = "failed", "failed"
    UNKNOWN = "unknown", "unknown"


class JobRecord(models.Model):
    """One job as last seen in Redis (``in_redis=False`` once Redis dropped it)."""

    id = models.BigAutoField(primary_key=True)
    prefix = models.CharField(max_length=100)
    queue = models.CharField(max_length=255)
    job_id = models.CharField("job id", max_length=255)
    # "<prefix>:<queue>:<job_id>", the job's Redis key: parents and roots point at it.
    key = models.CharField(max_length=620)
    name = models.CharField(max_length=255, blank=True)
    state = models.CharField(max_length=32, choices=JobState.choices, default=JobState.UNKNOWN)

    parent_key = models.CharField(max_length=620, blank=True, default="")
    parent_queue = models.CharField(max_length=255, blank=True, default="")
    parent_job_id = models.CharField(max_length=255, blank=True, default="")
    root_key = models.CharField(max_length=620, blank=True, default="")
    children_count = models.PositiveIntegerField(default=0)

    data = models.JSONField(null=True, blank=True)
    opts = models.JSONField(null=True, blank=True)
    returnvalue = models.JSONField("return value", null=True, blank=True)
    progress = models.JSONField(null=True, blank=True)
    failed_reason = models.TextField(blank=True, default="")
    stacktrace = models.JSONField(null=True, blank=True)
    # Names of the JSON fields whose Redis text did not parse; those hold the raw text.
    invalid_json = models.JSONField(default=list, blank=True)

    priority = models.IntegerField(default=0)
    delay = models.BigIntegerField(default=0)
    attempts_made = models.IntegerField(default=0)
    attempts_started = models.IntegerField(default=0)
    stalled_counter = models.IntegerField(default=0)
    processed_by = models.CharField(max_length=255, blank=True, default="")

    created_at = models.DateTimeField("created", null=True, blank=True)
    processed_at = models.DateTimeField("processed", null=True, blank=True)
    finished_at = models.DateTimeField("finished", null=True, blank=True)
    synced_at = models.DateTimeField("synced")
    in_redis = models.BooleanField("in Redis", default=True)

    class Meta:
        verbose_name = "job"
        verbose_name_plural = "jobs"
        ordering = ("-created_at", "-id")
        constraints = (
            models.UniqueConstraint(
                fields=["prefix", "queue", "job_id"], name="flowjobs_job_unique_id"
            ),
        )
        indexes = (
            models.Index(fields=["key"], name="flowjobs_job_key"),
            models.Index(fields=["queue", "state"], name="flowjobs_job_queue_state"),
            models.Index(fields=["state"], name="flowjobs_job_state"),
            models.Index(fields=["name"], name="flowjobs_job_name"),
            models.Index(fields=["created_at"], name="flowjobs_job_created"),
            models.Index(fields=["root_key"], name="flowjobs_job_root"),
            models.Index(fields=["parent_key"], name="flowjobs_job_parent"),
            models.Index(fields=["in_redis", "finished_at"], name="flowjobs_job_history"),
        )
        permissions = (
            ("retry_job", "Can retry failed jobs"),
            ("remove_job", "Can remove jobs"),
            ("promote_job", "Can promote delayed jobs"),
            ("pause_queue", "Can pause and resume queues"),
            ("cancel_job", "Can cancel running jobs"),
        )

    def __str__(self) -> str:
        return f"{self.queue}:{self.job_id}"

    @property
    def is_root(self) -> bool:
        return not self.parent_key

    @property
    def is_flow(self) -> bool:
        return bool(self.parent_key) or self.children_count > 0

    @property
    def duration_ms(self) -> int | None:
        if self.processed_at and self.finished_at:
            return max(0, int((self.finished_at - self.processed_at).total_seconds() * 1000))
        return None


class StreamPosition(models.Model):
    """How far the projector has applied one queue's events stream.

    ``entries_read`` counts the stream entries applied so far (compared with the
    stream's ``entries-added`` and length to tell whether trimming ate entries the
    projector never saw); it is None when unknown.
    """

    prefix = models.CharField(max_length=100)
    queue = models.CharField(max_length=255)
    last_id = models.CharField(max_length=64, default="0-0")
    entries_read = models.BigIntegerField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name = "events stream position"
        constraints = (
            models.UniqueConstraint(fields=["prefix", "queue"], name="flowjobs_stream_unique"),
        )

    def __str__(self) -> str:
        return f"{self.prefix}:{self.queue}:events @ {self.last_id}"


class UnstorableJob(models.Model):
    """A job (or a whole queue, with ``job_id`` empty) the mirror cannot store.

    Its identifiers hold a NUL character or do not fit their columns (see
    ``JobRecord``). The mirror records it here once, logs one line, and stores the
    rest of the batch. The identifiers are kept escaped (control characters as
    ``\\xNN``) and whole, however long.
    """

    id = models.BigAutoField(primary_key=True)
    # sha256 of the job's identifiers: one row per job however long its id.
    digest = models.CharField(max_length=64, unique=True)
    prefix = models.TextField()
    queue = models.TextField()
    job_id = models.TextField("job id", blank=True)
    reason = models.TextField()
    first_seen = models.DateTimeField()
    last_seen = models.DateTimeField()

    class Meta:
        verbose_name = "unstorable job"
        ordering = ("-last_seen", "-id")

    def __str__(self) -> str:
        return f"{self.queue}:{self.job_id}" if self.job_id else self.queue


class LeaseFence(models.Model):
    """The highest fence token that has written under one lease (see flowjobs.lease)."""

    id = models.BigAutoField(primary_key=True)
    name = models.CharField(max_length=255, unique=True)
    fence = models.BigIntegerField(default=0)

    class Meta:
        verbose_name = "lease fence"

    def __str__(self) -> str:
        return f"{self.name} @ {self.fence}"


from .outbox_entry import OutboxEntry, OutboxKind  # noqa: E402 - the outbox table (issue 15)

__all__ = [
    "JobRecord",
    "JobState",
    "LeaseFence",
    "OutboxEntry",
    "OutboxKind",
    "StreamPosition",
    "UnstorableJob",
]
