"""Issue 18: job schedulers in the admin: list, next run, last job, pause, resume,
remove, run now (each behind its permission, confirmed, CSRF-protected)."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client
from django.urls import reverse

from flowjobs.engine.schedulers import sync_job_schedulers
from flowjobs.mirror import reconcile
from flowjobs.scheduler_listing import SETTINGS_OWNER
from tests.helpers import wait_for

pytestmark = pytest.mark.django_db

LIST = "admin:flowjobs_jobrecord_schedulers"


def _action(queue: str, action: str, scheduler_id: str) -> str:
    url = reverse("admin:flowjobs_jobrecord_scheduler_action", args=[queue, action])
    return f"{url}?id={scheduler_id}"


@pytest.fixture
def reports(make_queue, flowjobs_settings) -> Any:
    queue = make_queue("reports")
    sync_job_schedulers(
        queue,
        {"nightly": {"pattern": "0 3 * * *", "template": {"name": "render"}}},
        owner=SETTINGS_OWNER,
    )
    queue.upsert_job_scheduler("poll", every=3_600_000, template={"data": {"feed": "a/b"}})
    return queue


def test_list_shows_schedule_next_run_last_job_and_origin(reports, make_worker, login):
    make_worker("reports", lambda job: "ok")
    wait_for(lambda: reports.get_job_counts("completed")["completed"] == 1, message="poll ran")
    reconcile()
    page = login("view_jobrecord").get(reverse(LIST))
    text = page.content.decode()
    assert page.status_code == 200
    rows = {item.row.id: item for item in page.context["schedulers"]}
    assert set(rows) == {"nightly", "poll"}
    assert rows["nightly"].row.declared_in == "settings" and rows["poll"].row.declared_in == "code"
    assert "cron 0 3 * * *" in text and "every 1 h" in text
    assert rows["poll"].last_job is not None and rows["poll"].last_job.state == "completed"
    assert reverse("admin:flowjobs_jobrecord_detail", args=[rows["poll"].last_job.pk]) in text
    assert rows["nightly"].last_job is None and "none yet" in text
    assert "fj-scheduler-pause" not in text  # a viewer gets no action buttons


def test_actions_need_their_permission(reports, login, make_user):
    viewer = login("view_jobrecord")
    for action in ("pause", "resume", "run", "remove"):
        assert viewer.get(_action("reports", action, "poll")).status_code == 403
        assert viewer.post(_action("reports", action, "poll")).status_code == 403
    assert reports.get_job_scheduler("poll").paused is False
    blind = Client()  # an action permission without the view one
    blind.force_login(make_user("blind", perms=("pause_queue",)))
    assert blind.post(_action("reports", "pause", "poll")).status_code == 403
    assert reports.get_job_scheduler("poll").paused is False
    pauser = login("view_jobrecord", "pause_queue")
    assert pauser.post(_action("reports", "remove", "poll")).status_code == 403
    assert pauser.get(_action("reports", "pause", "nope")).status_code == 404
    assert pauser.get(_action("unknown-queue", "pause", "poll")).status_code == 404


def test_pause_resume_run_now_and_remove_with_confirmation(reports, login):
    client = login("view_jobrecord", "pause_queue", "remove_job", "promote_job", csrf=True)
    confirm = client.get(_action("reports", "pause", "poll"))
    assert "are you sure" in confirm.content.decode()
    assert reports.get_job_scheduler("poll").paused is False  # a GET changes nothing
    # without the CSRF token the POST is refused
    assert client.post(_action("reports", "pause", "poll")).status_code == 403
    token = confirm.cookies["csrftoken"].value if "csrftoken" in confirm.cookies else None
    token = token or client.cookies["csrftoken"].value
    done = client.post(_action("reports", "pause", "poll"), {"csrfmiddlewaretoken": token})
    assert done.status_code == 302 and reports.get_job_scheduler("poll").paused is True
    page = client.get(reverse(LIST)).content.decode()
    assert "fj-scheduler-resume" in page

    before = reports.get_job_counts("waiting")["waiting"]
    client.post(_action("reports", "run", "poll"), {"csrfmiddlewaretoken": token})
    assert reports.get_job_counts("waiting")["waiting"] == before + 1
    client.post(_action("reports", "resume", "poll"), {"csrfmiddlewaretoken": token})
    assert reports.get_job_scheduler("poll").paused is False
    client.post(_action("reports", "remove", "poll"), {"csrfmiddlewaretoken": token})
    assert reports.get_job_scheduler("poll") is None
    assert [s.id for s in reports.get_job_schedulers()] == ["nightly"]
