"""What the admin pages show, escaping, tree paging, and the actions' effects."""

from __future__ import annotations

import datetime
import re
import time

import pytest
from django.contrib.messages import get_messages
from django.urls import reverse
from django.utils import timezone

from flowjobs.engine import Flow
from flowjobs.mirror import reconcile
from flowjobs.models import JobRecord

pytestmark = pytest.mark.django_db

ALL = ("view_jobrecord", "retry_job", "remove_job", "promote_job", "pause_queue")


def _messages(response) -> list[str]:
    return [str(message) for message in get_messages(response.wsgi_request)]


def test_changelist_lists_jobs_with_badges_filters_and_search(jobs, login):
    client = login("view_jobrecord")
    url = reverse("admin:flowjobs_jobrecord_changelist")
    page = client.get(url).content.decode()
    assert 'class="fj-badge fj-state-failed"' in page
    assert 'class="fj-badge fj-state-waitingchildren"' in page
    assert reverse("admin:flowjobs_jobrecord_detail", args=[jobs.failed.pk]) in page
    assert "Queues dashboard" in page

    failed_only = client.get(url, {"state__exact": "failed"})
    assert [row.pk for row in failed_only.context["cl"].result_list] == [jobs.failed.pk]
    by_queue = client.get(url, {"queue__exact": "other"})
    assert {row.queue for row in by_queue.context["cl"].result_list} == {"other"}
    by_id = client.get(url, {"q": jobs.delayed.job_id})
    assert [row.pk for row in by_id.context["cl"].result_list] == [jobs.delayed.pk]
    by_name = client.get(url, {"q": "extract"})
    assert [row.pk for row in by_name.context["cl"].result_list] == [jobs.middle.pk]
    in_flow = client.get(url, {"root_key": jobs.root.key})
    assert len(in_flow.context["cl"].result_list) == 3


def test_progress_is_a_bar(make_queue, make_worker, flowjobs_settings, login):
    queue = make_queue("q")
    job = queue.add("p", {})
    job.update_progress(42)
    reconcile()
    page = login("view_jobrecord").get(reverse("admin:flowjobs_jobrecord_changelist"))
    assert 'title="42%"><span style="width: 42%">' in page.content.decode()


def test_detail_of_a_failed_job_is_live_with_stack_trace(jobs, login):
    client = login(*ALL)
    jobs.failed_job = jobs.queue.get_job(jobs.failed.job_id)
    jobs.failed_job.log("fetching page 1")
    page = client.get(reverse("admin:flowjobs_jobrecord_detail", args=[jobs.failed.pk]))
    text = page.content.decode()
    assert page.context["live"] is True
    assert "extract went wrong" in text
    assert "RuntimeError" in text and "Traceback" in text
    assert "fetching page 1" in text
    assert "fj-action-retry" in text and "fj-action-promote" not in text
    assert reverse("admin:flowjobs_jobrecord_detail", args=[jobs.middle.pk]) in text


def test_detail_of_a_parent_lists_children_values(
    flow_producer, make_queue, make_worker, flowjobs_settings, login
):
    tree = flow_producer.add(Flow("sum", "parents", children=[Flow("one", "kids", data={"n": 1})]))
    make_worker("kids", lambda job: {"got": job.data["n"]})
    kid_key = tree.children[0].job.key
    parents = make_queue("parents")
    from tests.helpers import wait_for

    wait_for(lambda: parents.get_job_state(tree.job.id) == "waiting")
    reconcile()
    record = JobRecord.objects.get(queue="parents")
    page = login("view_jobrecord").get(reverse("admin:flowjobs_jobrecord_detail", args=[record.pk]))
    children = page.context["children"]
    assert [(child.key, child.outcome) for child in children] == [(kid_key, "completed")]
    assert "&quot;got&quot;: 1" in page.content.decode()


def test_detail_falls_back_to_the_mirror_when_redis_dropped_the_job(jobs, login):
    jobs.queue.client.delete(jobs.failed.key)
    page = login("view_jobrecord").get(
        reverse("admin:flowjobs_jobrecord_detail", args=[jobs.failed.pk])
    )
    assert page.context["live"] is False
    text = page.content.decode()
    assert "no longer in Redis" in text
    assert "extract went wrong" in text and "RuntimeError" in text


def test_job_data_is_escaped_everywhere(make_queue, flow_producer, flowjobs_settings, login):
    evil = "<script>alert('x')</script>"
    tree = flow_producer.add(
        Flow(
            "<img src=x onerror=alert(1)>",
            "evil",
            data={"html": evil},
            children=[Flow("child", "evil", data={"html": evil})],
        )
    )
    job = make_queue("evil").get_job(tree.job.id)
    job.log(evil)
    job.update_progress({"step": evil})
    reconcile()
    record = JobRecord.objects.get(queue="evil", job_id=tree.job.id)
    client = login("view_jobrecord")
    for url in (
        reverse("admin:flowjobs_jobrecord_detail", args=[record.pk]),
        reverse("admin:flowjobs_jobrecord_tree", args=[record.pk]),
        reverse("admin:flowjobs_jobrecord_children", args=[record.pk]) + "?fragment=1",
        reverse("admin:flowjobs_jobrecord_changelist"),
    ):
        text = client.get(url).content.decode()
        assert "<script>alert" not in text, url
        assert "<img src=x" not in text, url
    detail = client.get(reverse("admin:flowjobs_jobrecord_detail", args=[record.pk]))
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in detail.content.decode()


def test_tree_shows_three_levels_and_marks_failures(jobs, login):
    client = login("view_jobrecord")
    page = client.get(reverse("admin:flowjobs_jobrecord_tree", args=[jobs.failed.pk]))
    text = page.content.decode()
    for record in (jobs.root, jobs.middle, jobs.failed):
        assert f'data-job="{record.pk}"' in text
    assert "fj-node-failed fj-focused" in text
    assert "extract went wrong" in text
    assert "1 failed" in text  # the middle node's children summary
    assert page.context["tree_total"] == 3


def test_large_trees_page_their_children(flow_producer, flowjobs_settings, login):
    tree = flow_producer.add(
        Flow("big", "big", children=[Flow("kid", "kids", data={"i": i}) for i in range(250)])
    )
    reconcile()
    root = JobRecord.objects.get(queue="big")
    assert root.children_count == 250
    client = login("view_jobrecord")
    text = client.get(reverse("admin:flowjobs_jobrecord_tree", args=[root.pk])).content.decode()
    assert text.count('class="fj-node ') == 1 + 100
    more = reverse("admin:flowjobs_jobrecord_children", args=[root.pk]) + "?page=2"
    assert f'href="{more}" data-more' in text.replace("&amp;", "&")
    assert "150 not shown" in text

    page3 = client.get(
        reverse("admin:flowjobs_jobrecord_children", args=[root.pk]), {"page": 3, "fragment": 1}
    ).content.decode()
    assert page3.count('class="fj-node ') == 50
    assert "data-more" not in page3
    assert "<html" not in page3

    # A selected job beyond the first page is still shown, under its parent.
    last = JobRecord.objects.filter(queue="kids").order_by("-created_at", "-pk").first()
    focused = client.get(reverse("admin:flowjobs_jobrecord_tree", args=[last.pk]))
    assert f'data-job="{last.pk}"' in focused.content.decode()
    assert tree.job.id in focused.content.decode()


def test_dashboard_shows_live_counts_and_pause_state(jobs, login):
    client = login(*ALL)
    other = jobs.queue.__class__("other", connection=jobs.queue.client, prefix=jobs.queue.prefix)
    other.pause()
    page = client.get(reverse("admin:flowjobs_jobrecord_dashboard"))
    rows = {row.name: row for row in page.context["queues"]}
    assert set(rows) >= {"reports", "etl", "fetchers", "other"}
    counts = dict((state, total) for state, total, _url in rows["other"].cells)
    assert counts["delayed"] == 1 and counts["waiting"] == 1
    assert rows["other"].paused and not rows["fetchers"].paused
    text = page.content.decode()
    assert "?queue__exact=fetchers&amp;state__exact=failed" in text
    assert "Resume" in text


def test_a_queue_with_another_client_s_value_at_a_key_is_one_row_of_the_dashboard(
    jobs, login, redis_client
):
    """Another client's value at one queue's `wait` stopped the whole dashboard at that
    queue ("Redis could not be read"): the queues after it were missing. Now that queue's
    row names the key and every other queue is listed with its counts."""
    foreign_key = f"{jobs.queue.prefix}:etl:wait"
    redis_client.delete(foreign_key)
    redis_client.set(foreign_key, "another client's value")
    page = login(*ALL).get(reverse("admin:flowjobs_jobrecord_dashboard"))
    rows = {row.name: row for row in page.context["queues"]}
    assert set(rows) >= {"reports", "etl", "fetchers", "other"}
    assert f"{foreign_key} holds a string, not a list" in rows["etl"].problem
    assert not rows["fetchers"].problem and rows["fetchers"].cells
    assert not page.context["redis_error"]
    text = page.content.decode()
    assert f"{foreign_key} holds a string" in text


def test_retry_remove_promote_and_pause_through_the_admin(jobs, login):
    client = login(*ALL)
    confirm = client.get(
        reverse("admin:flowjobs_jobrecord_job_action", args=[jobs.failed.pk, "retry"])
    )
    assert "are you sure" in confirm.content.decode()
    assert jobs.queue.get_job_state(jobs.failed.job_id) == "failed"  # GET changes nothing

    response = client.post(
        reverse("admin:flowjobs_jobrecord_job_action", args=[jobs.failed.pk, "retry"]),
        {"confirm": "yes"},
        follow=True,
    )
    assert jobs.queue.get_job_state(jobs.failed.job_id) == "waiting"
    assert any("queued again" in message for message in _messages(response))

    client.post(reverse("admin:flowjobs_jobrecord_job_action", args=[jobs.delayed.pk, "promote"]))
    other = jobs.queue.__class__("other", connection=jobs.queue.client, prefix=jobs.queue.prefix)
    assert other.get_job_state(jobs.delayed.job_id) == "waiting"

    response = client.post(
        reverse("admin:flowjobs_jobrecord_job_action", args=[jobs.root.pk, "remove"]), follow=True
    )
    assert other.client.exists(jobs.root.key) == 0
    assert other.client.exists(jobs.middle.key) == 0  # children went with it
    assert any("removed" in message for message in _messages(response))
    assert JobRecord.objects.filter(pk=jobs.root.pk).exists()  # rows are never deleted

    prefix = jobs.queue.prefix
    client.post(reverse("admin:flowjobs_jobrecord_queue_action", args=[prefix, "other", "pause"]))
    assert other.is_paused()
    response = client.post(
        reverse("admin:flowjobs_jobrecord_queue_action", args=[prefix, "other", "resume"]),
        follow=True,
    )
    assert not other.is_paused()
    assert "queue other resumed" in _messages(response)


def test_failed_action_is_reported_not_raised(jobs, login):
    client = login(*ALL)
    response = client.post(
        reverse("admin:flowjobs_jobrecord_job_action", args=[jobs.waiting.pk, "promote"]),
        follow=True,
    )
    assert response.status_code == 200
    assert any("Promote" in m and "failed" in m for m in _messages(response))


def test_bulk_retry_from_the_changelist_asks_then_retries(jobs, login):
    client = login(*ALL)
    changelist = reverse("admin:flowjobs_jobrecord_changelist")
    selected = [jobs.failed.pk, jobs.waiting.pk]
    confirm = client.post(changelist, {"action": "retry_selected", "_selected_action": selected})
    text = confirm.content.decode()
    assert "are you sure" in text and "1 selected job skipped" in text
    assert jobs.queue.get_job_state(jobs.failed.job_id) == "failed"
    assert re.search(r'name="post" value="yes"', text)

    response = client.post(
        changelist,
        {"action": "retry_selected", "_selected_action": [jobs.failed.pk], "post": "yes"},
        follow=True,
    )
    assert jobs.queue.get_job_state(jobs.failed.job_id) == "waiting"
    assert any("1 job(s) done" in message for message in _messages(response))


def test_a_tree_of_10000_children_renders_one_page(flowjobs_settings, login):
    now = timezone.now()
    root = JobRecord.objects.create(
        prefix="p",
        queue="big",
        job_id="root",
        key="p:big:root",
        root_key="p:big:root",
        state="waiting-children",
        children_count=10_000,
        synced_at=now,
    )
    JobRecord.objects.bulk_create(
        [
            JobRecord(
                prefix="p",
                queue="kids",
                job_id=str(i),
                key=f"p:kids:{i}",
                parent_key=root.key,
                root_key=root.key,
                synced_at=now,
                state="failed" if i == 9_999 else "completed",
                created_at=now + datetime.timedelta(milliseconds=i),
            )
            for i in range(10_000)
        ],
        batch_size=1000,
    )
    client = login("view_jobrecord")
    started = time.perf_counter()
    response = client.get(reverse("admin:flowjobs_jobrecord_tree", args=[root.pk]))
    elapsed = time.perf_counter() - started
    text = response.content.decode()
    assert text.count('class="fj-node ') == 101
    assert "9900 not shown" in text
    # Failed children come first, even the last one created.
    first_child = text.index('class="fj-node ', text.index('class="fj-node ') + 1)
    assert text[first_child:].startswith('class="fj-node fj-node-failed')
    assert "1 failed" in text
    assert elapsed < 3, f"tree page took {elapsed:.2f} s"


def test_cancel_stops_a_running_job_through_its_worker(
    make_queue, make_worker, flowjobs_settings, login
):
    queue = make_queue("q")
    job = queue.add("long", {})

    def process(job):
        job.cancellation.wait(30)
        job.raise_if_cancelled()  # a sync processor stops at a point of its choosing

    make_worker("q", process)
    from tests.helpers import wait_for

    wait_for(lambda: queue.get_job_state(job.id) == "active")
    reconcile()
    record = JobRecord.objects.get(job_id=job.id)
    url = reverse("admin:flowjobs_jobrecord_job_action", args=[record.pk, "cancel"])
    assert login("view_jobrecord").post(url, {"confirm": "yes"}).status_code == 403
    response = login("view_jobrecord", "cancel_job").post(url, {"confirm": "yes"}, follow=True)
    # a thread cannot be killed: the admin says it was only signalled
    assert any("NOT stopped by force" in message for message in _messages(response))
    wait_for(lambda: queue.get_job_state(job.id) == "failed")
    assert queue.get_job(job.id).failed_reason == "cancelled: cancelled from the admin"
