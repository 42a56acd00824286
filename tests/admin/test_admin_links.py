"""Issue 18: a project's own ModelAdmin links to a job and its flow."""

from __future__ import annotations

import pytest
from django.urls import reverse

from flowjobs.admin_links import flow_admin_url, job_admin_url
from flowjobs.engine import Flow
from flowjobs.mirror import reconcile
from flowjobs.models import JobRecord
from tests.testapp.models import Note

pytestmark = pytest.mark.django_db


def test_own_changelist_links_to_the_job_and_its_flow(
    flow_producer, flowjobs_settings, admin_client
):
    flow_producer.add(Flow("order", "orders", job_id="order-7", children=[Flow("charge", "pay")]))
    reconcile()
    record = JobRecord.objects.get(queue="orders", job_id="order-7")
    Note.objects.create(text="order-7")
    Note.objects.create(text="order-8")  # not enqueued (yet): shown, not linked
    detail = reverse("admin:flowjobs_jobrecord_detail", args=[record.pk])
    tree = reverse("admin:flowjobs_jobrecord_tree", args=[record.pk])
    assert job_admin_url("order-7", "orders") == detail and flow_admin_url("order-7") == tree
    assert job_admin_url("order-7", "other") is None and job_admin_url("order-8") is None

    page = admin_client.get(reverse("admin:testapp_note_changelist")).content.decode()
    assert f'<a href="{detail}">order-7</a>' in page
    assert f'<a href="{tree}">flow</a>' in page
    assert "fj-state-waitingchildren" in page
    assert 'title="not in the job mirror (yet)">order-8<' in page
