"""The processors of the benchmark site: plain `def`, as Django users write them."""

from __future__ import annotations

from typing import Any

from flowjobs import Job, processor

from .models import Row


@processor("bench")
def noop(job: Job) -> Any:
    return None


@processor("bench-orm")
def insert_row(job: Job) -> Any:
    """W6: one ORM insert per job, as a typical Django job does."""
    Row.objects.create(seq=job.data["seq"])
