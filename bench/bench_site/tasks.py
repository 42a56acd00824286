"""The django.tasks task of W1.add.tasks (Django 6.0+)."""

from __future__ import annotations

from typing import Any

from django.tasks import task


@task(queue_name="bench-tasks")
def record(seq: int, **payload: Any) -> None:
    """Enqueued only: W1 measures adding jobs, nothing runs them."""
