"""Issue 18, tree nodes and job detail: what a node says about its job and its children.

Times, duration, progress and the return value on a node; ignored and removed child
failures marked as such (not counted as real failures); a running job's attempt number;
long ids in full; the parent's detail agreeing with the tree about a failed child; a
waiting parent saying why it waits and what to do; stack traces with the user's frames
first; options under BullMQ's long names.
"""

from __future__ import annotations

import threading
from typing import Any

import pytest
from django.urls import reverse

from flowjobs.engine import Flow
from flowjobs.mirror import reconcile
from flowjobs.models import JobRecord
from tests.helpers import wait_for

pytestmark = pytest.mark.django_db


def _tree(client: Any, record: JobRecord) -> str:
    return client.get(reverse("admin:flowjobs_jobrecord_tree", args=[record.pk])).content.decode()


def _detail(client: Any, record: JobRecord) -> Any:
    return client.get(reverse("admin:flowjobs_jobrecord_detail", args=[record.pk]))


def _node_html(page: str, record: JobRecord) -> str:
    """The markup of one tree node's own line (up to its children list)."""
    start = page.index(f'data-job="{record.pk}"')
    end = page.find('<ul class="fj-children">', start)
    return page[start : end if end != -1 else start + 4000]


def test_a_parent_stuck_on_a_failed_child_says_why_and_the_detail_agrees(jobs, login):
    client = login("view_jobrecord")
    # The tree: the middle job waits on a failed child that has no failure policy,
    # and so does the root, which waits on the middle one.
    page = _tree(client, jobs.root)
    node = _node_html(page, jobs.middle)
    assert "waits forever" in node
    assert "no failure policy" in node
    root = _node_html(page, jobs.root)
    assert "waits forever: a job further down failed" in root
    # The parent's detail: the failed child is "failed", never "pending".
    page = _detail(client, jobs.middle)
    outcomes = {child.key: child.outcome for child in page.context["children"]}
    assert outcomes[jobs.failed.key].startswith("failed")
    assert "pending" not in outcomes[jobs.failed.key]
    text = page.content.decode()
    assert 'class="fj-why-waiting"' in text
    assert "fail_parent_on_failure" in text  # the policies it could have had
    assert "Retry the failed child" in text
    assert reverse("admin:flowjobs_jobrecord_detail", args=[jobs.failed.pk]) in text
    # The root's page: its child will never finish, and it says so, linking to it.
    root_page = _detail(client, jobs.root).content.decode()
    assert "will never finish" in root_page
    assert reverse("admin:flowjobs_jobrecord_detail", args=[jobs.middle.pk]) in root_page


def _boom(job: Any) -> Any:
    if job.data and job.data.get("fail"):
        raise RuntimeError(f"{job.name} broke")
    return {"ok": job.name}


@pytest.mark.parametrize(
    ("policy", "mark"),
    [
        ("ignore_dependency_on_failure", "failure ignored"),
        ("remove_dependency_on_failure", "failure removed"),
    ],
)
def test_ignored_and_removed_failures_are_not_counted_as_failures(
    policy, mark, flow_producer, make_queue, make_worker, flowjobs_settings, login
):
    tree = flow_producer.add(
        Flow(
            "order",
            "orders",
            children=[
                Flow("validate", "steps"),
                Flow("charge", "steps"),
                Flow("reserve", "steps", data={"fail": True}, **{policy: True}),
            ],
        )
    )
    make_worker("steps", _boom)
    orders = make_queue("orders")
    wait_for(lambda: orders.get_job_state(tree.job.id) == "waiting", message="parent released")
    reconcile()
    root = JobRecord.objects.get(queue="orders")
    reserve = JobRecord.objects.get(queue="steps", name="reserve")
    page = _tree(login("view_jobrecord"), root)
    root_line = _node_html(page, root)
    assert "3 children" in root_line
    assert "fj-failed-count" not in root_line  # no real failure among them
    assert f"1 {mark}" in root_line
    assert mark in _node_html(page, reserve)


def test_node_shows_times_progress_return_value_and_full_long_id(
    flow_producer, make_queue, make_worker, flowjobs_settings, login
):
    long_id = "order-" + "x" * 70 + "-end"
    tree = flow_producer.add(
        Flow("order", "orders", job_id=long_id, children=[Flow("validate", "steps")])
    )

    def validate(job: Any) -> Any:
        job.update_progress(60)
        return {"valid": True, "checked": "address"}

    make_worker("steps", validate)
    orders = make_queue("orders")
    wait_for(lambda: orders.get_job_state(tree.job.id) == "waiting", message="parent released")
    reconcile()
    root = JobRecord.objects.get(queue="orders")
    child = JobRecord.objects.get(queue="steps")
    page = _tree(login("view_jobrecord"), root)
    assert long_id in _node_html(page, root)  # not cut with "..."
    line = _node_html(page, child)
    assert "fj-times" in line and "created" in line and "finished" in line
    assert child.finished_at.strftime("%H:%M:%S") in line
    assert 'title="60%"' in line
    assert "fj-value" in line and "&quot;checked&quot;: &quot;address&quot;" in line


def test_a_running_job_shows_the_attempt_it_is_on(
    make_queue, make_worker, flowjobs_settings, login
):
    started, release = threading.Event(), threading.Event()

    def slow(job: Any) -> Any:
        started.set()
        release.wait(10)
        return 1

    queue = make_queue("slow")
    job = queue.add("run", {}, attempts=3)
    make_worker("slow", slow)
    try:
        assert started.wait(10)
        reconcile()
        record = JobRecord.objects.get(queue="slow")
        client = login("view_jobrecord")
        changelist = client.get(reverse("admin:flowjobs_jobrecord_changelist")).content.decode()
        assert "attempt 1/3" in changelist and "0/3" not in changelist
        assert "attempt 1 of 3 running" in _detail(client, record).content.decode()
    finally:
        release.set()
    wait_for(lambda: queue.get_job_state(job.id) == "completed")


def test_stack_trace_puts_user_frames_first_and_folds_flowjobs_frames(jobs, login):
    page = _detail(login("view_jobrecord"), jobs.failed)
    text = page.content.decode()
    main = text[text.index('<pre class="fj-stacktrace">') :]
    main = main[: main.index("</pre>")]
    assert "_fail" in main and "extract went wrong" in main
    assert "flowjobs/engine" not in main and "flowjobs/registry" not in main
    folded = text[text.index('class="fj-trace-folded"') :]
    assert "flowjobs frames" in folded[:300]
    assert "flowjobs/engine/" in folded


def test_options_show_bullmq_long_names(flow_producer, make_queue, flowjobs_settings, login):
    flow_producer.add(
        Flow(
            "order",
            "orders",
            children=[Flow("reserve", "steps", ignore_dependency_on_failure=True)],
        )
    )
    queue = make_queue("logs")
    queue.add("kept", {}, keep_logs=10)
    reconcile()
    client = login("view_jobrecord")
    reserve = _detail(client, JobRecord.objects.get(queue="steps")).content.decode()
    assert "ignoreDependencyOnFailure" in reserve and "&quot;idof&quot;" not in reserve
    kept = _detail(client, JobRecord.objects.get(queue="logs")).content.decode()
    assert "keepLogs" in kept and "&quot;kl&quot;" not in kept


def test_the_advice_works_removing_the_stuck_child_releases_its_parent(jobs, login, make_queue):
    client = login("view_jobrecord", "remove_job")
    url = reverse("admin:flowjobs_jobrecord_job_action", args=[jobs.failed.pk, "remove"])
    assert client.post(url).status_code == 302
    etl = make_queue("etl")
    assert etl.get_job_state(jobs.middle.job_id) == "waiting"  # runs without its value
