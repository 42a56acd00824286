"""The Prometheus endpoint (flowjobs.urls): staff or bearer token only, parsable output."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from flowjobs import conf

pytestmark = [pytest.mark.django_db, pytest.mark.urls("tests.django.metrics_urls")]


def queue_jobs(response) -> dict[tuple[str, str], float]:
    found = {}
    for family in text_string_to_metric_families(response.content.decode()):
        for sample in family.samples:
            if sample.name == "flowjobs_queue_jobs":
                found[(sample.labels["queue"], sample.labels["state"])] = sample.value
    return found


@pytest.fixture
def reports(flowjobs_settings):
    flowjobs_settings.FLOWJOBS = {
        **flowjobs_settings.FLOWJOBS,
        "QUEUES": {"reports": {}, "mail": {}},
    }
    conf.reset()
    queue = conf.get_queue("reports")
    queue.add("render", {"id": 1})
    return queue


def test_staff_sees_the_metrics(client, admin_user, reports):
    client.force_login(admin_user)
    response = client.get("/flowjobs/metrics")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain")
    jobs = queue_jobs(response)
    assert jobs[("reports", "waiting")] == 1
    assert jobs[("mail", "waiting")] == 0


def test_anonymous_and_non_staff_are_refused(client, django_user_model, reports):
    assert client.get("/flowjobs/metrics").status_code == 403
    user = django_user_model.objects.create_user("plain", password="x")
    client.force_login(user)
    assert client.get("/flowjobs/metrics").status_code == 403


def test_a_bearer_token_opens_the_endpoint(client, reports, monkeypatch):
    monkeypatch.setenv("FLOWJOBS_METRICS_TOKEN", "s3cret")
    assert client.get("/flowjobs/metrics", HTTP_AUTHORIZATION="Bearer wrong").status_code == 403
    response = client.get("/flowjobs/metrics", HTTP_AUTHORIZATION="Bearer s3cret")
    assert response.status_code == 200
    assert queue_jobs(response)[("reports", "waiting")] == 1
