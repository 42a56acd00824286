"""Issue 18: live updates (JSON the pages poll), the flow timeline, the dashboard charts."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.test import Client
from django.urls import reverse

from flowjobs.admin_charts import minute_series
from flowjobs.engine import Flow
from flowjobs.mirror import reconcile
from flowjobs.models import JobRecord
from tests.helpers import wait_for, work_for

pytestmark = pytest.mark.django_db


def _live(client: Client, name: str, *args: Any, **query: str) -> Any:
    response = client.get(reverse(f"admin:flowjobs_jobrecord_{name}", args=args), query)
    assert response.status_code == 200, response.status_code
    assert response["Content-Type"] == "application/json"
    return json.loads(response.content)


def test_live_answers_need_staff_and_the_view_permission(jobs, login):
    urls = [
        reverse("admin:flowjobs_jobrecord_live_tree", args=[jobs.root.pk]),
        reverse("admin:flowjobs_jobrecord_live_detail", args=[jobs.root.pk]),
        reverse("admin:flowjobs_jobrecord_live_dashboard"),
    ]
    anonymous, no_perm, viewer = Client(), login(), login("view_jobrecord")
    not_staff = login("view_jobrecord", staff=False)
    for url in urls:
        assert anonymous.get(url).status_code == 302  # to the login page
        assert not_staff.get(url).status_code == 302
        assert no_perm.get(url).status_code == 403
        assert viewer.get(url).status_code == 200


def test_live_tree_and_detail_follow_the_jobs(
    flow_producer, make_queue, make_worker, flowjobs_settings, login
):
    tree = flow_producer.add(Flow("order", "orders", children=[Flow("charge", "payments")]))
    reconcile()
    root = JobRecord.objects.get(queue="orders")
    child = JobRecord.objects.get(queue="payments")
    client = login("view_jobrecord")
    jobs = f"{root.pk},{child.pk}"
    before = _live(client, "live_tree", root.pk, jobs=jobs)
    assert "waiting" in before["regions"][f"fj-line-{child.pk}"]
    assert before["states"] == {str(root.pk): "waiting-children", str(child.pk): "waiting"}
    assert before["next_ms"] == 2000
    assert "fj-tl-row" in before["regions"]["fj-timeline"]
    detail = _live(client, "live_detail", root.pk)
    assert "waiting-children" in detail["regions"]["fj-detail-live"]
    assert "1 child still to finish" in detail["regions"]["fj-detail-live"]

    make_worker("payments", lambda job: {"charged": 12})
    make_worker("orders", lambda job: "shipped")
    orders = make_queue("orders")
    wait_for(lambda: orders.get_job_state(tree.job.id) == "completed", message="flow done")
    reconcile()
    after = _live(client, "live_tree", root.pk, jobs=jobs)
    assert after["states"] == {str(root.pk): "completed", str(child.pk): "completed"}
    assert "&quot;charged&quot;: 12" in after["regions"][f"fj-line-{child.pk}"]
    assert "2 jobs in this flow" in after["regions"]["fj-tree-summary"]
    assert after["next_ms"] == 15000  # settled: ask rarely
    detail = _live(client, "live_detail", root.pk)
    assert detail["state"] == "completed" and "shipped" in detail["regions"]["fj-detail-live"]


def test_timeline_spans_and_critical_path(
    flow_producer, make_queue, make_worker, flowjobs_settings, login
):
    tree = flow_producer.add(
        Flow(
            "report",
            "reports",
            children=[
                Flow("fast", "parts", data={"seconds": 0}),
                Flow("slow", "parts", data={"seconds": 0.4}),
            ],
        )
    )

    def part(job: Any) -> Any:
        work_for(job.data["seconds"])
        return job.name

    make_worker("parts", part, concurrency=2)
    make_worker("reports", lambda job: "done")
    reports = make_queue("reports")
    wait_for(lambda: reports.get_job_state(tree.job.id) == "completed", message="flow done")
    reconcile()
    root = JobRecord.objects.get(queue="reports")
    page = login("view_jobrecord").get(reverse("admin:flowjobs_jobrecord_tree", args=[root.pk]))
    timeline = page.context["timeline"]
    rows = {row.record.name: row for row in timeline.rows}
    assert [row.record.name for row in timeline.rows][0] == "report"
    assert rows["slow"].critical and rows["report"].critical and not rows["fast"].critical
    assert rows["slow"].run[1] > rows["fast"].run[1]  # the slow one's bar is longer
    # the parent waited for its children, then ran after the slow one finished
    assert rows["report"].run[0] >= rows["slow"].run[0] + rows["slow"].run[1] - 0.5
    text = page.content.decode()
    assert 'class="fj-tl-row fj-tl-critical"' in text and "fj-tl-wait" in text


def test_minute_series_maps_bullmq_metrics_to_the_last_hour():
    now = 100 * 60_000 + 5_000  # 5 s into minute 100
    empty = {"meta": {"count": 0, "prev_ts": 0, "prev_count": 0}, "data": []}
    assert minute_series(empty, now) == [0] * 60
    # last roll-over in minute 98: 7 jobs since; whole minutes 97, 96 held 3 and 4
    metrics = {"meta": {"count": 20, "prev_ts": 98 * 60_000 + 1, "prev_count": 13}, "data": [3, 4]}
    series = minute_series(metrics, now)
    assert len(series) == 60 and series[-1] == 0 and series[-2] == 0
    assert series[-3] == 7 and series[-4] == 3 and series[-5] == 4 and sum(series) == 14


def test_dashboard_charts_count_jobs_per_minute_and_show_mirror_lag(
    make_queue, make_worker, flowjobs_settings, login
):
    queue = make_queue("mail")
    for index in range(5):
        queue.add("send", {"fail": index == 0})

    def send(job: Any) -> Any:
        if job.data["fail"]:
            raise RuntimeError("bounced")
        return "sent"

    make_worker("mail", send, metrics_max_data_points=60)
    wait_for(lambda: queue.get_job_counts("completed")["completed"] == 4)
    wait_for(lambda: queue.get_job_counts("failed")["failed"] == 1)
    page = login("view_jobrecord").get(reverse("admin:flowjobs_jobrecord_dashboard"))
    chart = next(chart for chart in page.context["charts"] if chart.queue == "mail")
    assert chart.recorded and chart.completed_total == 4 and chart.failed_total == 1
    text = page.content.decode()
    assert 'class="fj-bar-completed"' in text and 'class="fj-bar-failed"' in text
    assert "4 completed, 1 failed" in text  # the current minute's tooltip
    row = next(row for row in page.context["queues"] if row.name == "mail")
    assert row.lag and row.lag_ms is not None  # nothing applied yet: behind
    assert "behind)" in text


def test_dashboard_polls_do_not_scan_the_keyspace_each_time(
    make_queue, rclient, flowjobs_settings, login
):
    """Finding queues is a SCAN of every key: the polling dashboard reuses it a while."""
    make_queue("mail").add("send", {})
    client = login("view_jobrecord")

    def scans() -> int:
        return int(rclient.info("commandstats").get("cmdstat_scan", {}).get("calls", 0))

    first = _live(client, "live_dashboard")
    assert "mail" in first["regions"]["fj-dashboard-live"]
    before = scans()
    for _ in range(3):
        _live(client, "live_dashboard")
    assert scans() == before


def test_a_stuck_flows_critical_path_leads_to_the_failure_holding_it(
    flow_producer, make_queue, make_worker, flowjobs_settings, login
):
    tree = flow_producer.add(
        Flow(
            "order",
            "orders",
            children=[Flow("charge", "steps", data={"fail": True}), Flow("pack", "steps")],
        )
    )

    def step(job: Any) -> Any:
        if job.data and job.data.get("fail"):
            raise RuntimeError("card declined")
        work_for(0.2)  # finishes after the failure: the latest end is not the culprit
        return "packed"

    make_worker("steps", step, concurrency=2)
    steps = make_queue("steps")
    wait_for(lambda: steps.get_job_counts("completed", "failed") == {"completed": 1, "failed": 1})
    reconcile()
    root = JobRecord.objects.get(queue="orders", job_id=tree.job.id)
    page = login("view_jobrecord").get(reverse("admin:flowjobs_jobrecord_tree", args=[root.pk]))
    rows = {row.record.name: row for row in page.context["timeline"].rows}
    assert rows["order"].open_ended and rows["order"].critical
    assert rows["charge"].critical and not rows["pack"].critical


def test_live_answers_timeline_and_schedulers_escape_job_text(
    flow_producer, make_queue, flowjobs_settings, login
):
    evil = "<img src=x onerror=alert(1)>"
    tree = flow_producer.add(
        Flow(evil, "evil", data={"html": evil}, children=[Flow(evil, "evil", data={"x": evil})])
    )
    make_queue("evil").upsert_job_scheduler("s", every=60_000, template={"name": evil})
    reconcile()
    record = JobRecord.objects.get(queue="evil", job_id=tree.job.id)
    client = login("view_jobrecord")
    pks = ",".join(str(pk) for pk in JobRecord.objects.values_list("pk", flat=True))
    answers = [
        _live(client, "live_tree", record.pk, jobs=pks),
        _live(client, "live_detail", record.pk),
        _live(client, "live_dashboard"),
    ]
    for answer in answers:
        for html in answer["regions"].values():
            assert "<img src=x" not in html
    assert "&lt;img src=x" in answers[0]["regions"]["fj-timeline"]
    page = client.get(reverse("admin:flowjobs_jobrecord_schedulers")).content.decode()
    assert "<img src=x" not in page and "&lt;img src=x" in page
