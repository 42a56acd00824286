"""The dashboard's outbox block (issue 15): entries waiting for Redis, the oldest's age,
the error Redis gave for the oldest refused one."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from flowjobs.models import OutboxEntry

pytestmark = pytest.mark.django_db


def test_dashboard_shows_the_outbox_backlog(flowjobs_settings, login, prefix):  # noqa: ANN001
    client = login("view_jobrecord")
    page = client.get(reverse("admin:flowjobs_jobrecord_dashboard"))
    assert page.context["outbox"] == [
        {"database": "default", "entries": 0, "oldest": "", "last_error": ""}
    ]
    for age, error in ((90, "OutOfMemoryError: OOM command not allowed"), (5, "")):
        OutboxEntry.objects.create(
            batch=uuid.uuid4(),
            prefix=prefix,
            kind="jobs",
            jobs=[],
            created_at=timezone.now() - timedelta(seconds=age),
            last_error=error,
        )
    OutboxEntry.objects.create(
        batch=uuid.uuid4(), prefix="another-deployment", kind="jobs", jobs=[]
    )
    page = client.get(reverse("admin:flowjobs_jobrecord_dashboard"))
    (row,) = page.context["outbox"]
    assert row["entries"] == 2 and row["oldest"].startswith("1 min 3")
    text = page.content.decode()
    assert "Outbox" in text and "OutOfMemoryError: OOM command not allowed" in text
