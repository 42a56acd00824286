"""The admin's Cancel says truthfully what the job's worker did (issue 16, item 10)."""

from __future__ import annotations

import threading

import pytest
from django.contrib.messages import get_messages
from django.urls import reverse

from flowjobs.mirror import reconcile
from flowjobs.models import JobRecord
from tests.helpers import wait_for

pytestmark = pytest.mark.django_db


def _cancel(login, queue, job) -> list[str]:
    reconcile()
    record = JobRecord.objects.get(job_id=job.id)
    url = reverse("admin:flowjobs_jobrecord_job_action", args=[record.pk, "cancel"])
    response = login("view_jobrecord", "cancel_job").post(url, {"confirm": "yes"}, follow=True)
    return [str(message) for message in get_messages(response.wsgi_request)]


def test_cancel_of_a_process_pool_job_says_its_process_was_killed(
    make_queue, make_worker, flowjobs_settings, login
):
    queue = make_queue("q")
    job = queue.add("spin", {"seconds": 40})
    make_worker("q", "tests.engine.isolated_processors:spin", isolation="process")
    wait_for(lambda: queue.get_job_state(job.id) == "active", timeout=10)
    messages = _cancel(login, queue, job)
    assert any("killed the process running it" in message for message in messages), messages
    wait_for(lambda: queue.get_job_state(job.id) == "failed")
    assert queue.get_job(job.id).failed_reason == "cancelled: cancelled from the admin"


def test_cancel_of_a_sleeping_thread_job_does_not_claim_it_stopped(
    make_queue, make_worker, flowjobs_settings, login
):
    """The issue's case: a sync processor that sleeps, ignoring the signal."""
    queue = make_queue("q")
    job = queue.add("pay", {})
    release = threading.Event()

    def process(job):
        release.wait(40)  # stands in for time.sleep(40): no look at the signal
        return "captured"

    make_worker("q", process)
    wait_for(lambda: queue.get_job_state(job.id) == "active")
    messages = _cancel(login, queue, job)
    assert any("NOT stopped by force" in message for message in messages), messages
    assert not any("stopped:" in message for message in messages)
    release.set()
    wait_for(lambda: queue.get_job_state(job.id) == "completed")
