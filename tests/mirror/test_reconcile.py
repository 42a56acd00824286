"""reconcile(): repairing the mirror from Redis, and `syncjobs --once`."""

from __future__ import annotations

import datetime

import pytest
from django.core.management import call_command
from django.utils import timezone

from flowjobs.engine import Flow
from flowjobs.mirror import reconcile
from flowjobs.models import JobRecord, StreamPosition
from tests.helpers import wait_for

pytestmark = pytest.mark.django_db


def _fail_odd(job):
    if job.data["i"] % 2:
        raise ValueError(f"odd {job.data['i']}")
    return job.data["i"]


def test_reconcile_repairs_deleted_rows_changed_states_and_vanished_jobs(
    make_queue, make_worker, make_projector
):
    queue = make_queue("q")
    jobs = [queue.add("n", {"i": i}) for i in range(10)]
    worker = make_worker("q", _fail_odd)
    wait_for(lambda: sum(queue.get_job_counts("completed", "failed").values()) == 10)
    worker.close()
    waiting = queue.add("w", {"i": 99})
    make_projector().catch_up()
    assert JobRecord.objects.filter(queue="q").count() == 11

    # Damage the mirror: lose rows, corrupt states and fields, invent a job.
    JobRecord.objects.filter(job_id__in=[jobs[0].id, jobs[1].id]).delete()
    JobRecord.objects.filter(job_id=jobs[2].id).update(state="active", returnvalue=None)
    JobRecord.objects.filter(job_id=waiting.id).update(state="failed")
    long_ago = timezone.now() - datetime.timedelta(days=1)
    JobRecord.objects.create(
        prefix=queue.prefix,
        queue="q",
        job_id="phantom",
        key=f"{queue.prefix}:q:phantom",
        state="waiting",
        synced_at=long_ago,
    )
    # And change Redis behind the mirror's back, without events.
    queue.client.delete(jobs[4].key)
    queue.client.zrem(queue.keys.key("completed"), jobs[4].id)

    result = reconcile()

    rows = {row.job_id: row for row in JobRecord.objects.filter(queue="q")}
    assert rows[jobs[0].id].state == "completed" and rows[jobs[0].id].returnvalue == 0
    assert rows[jobs[1].id].state == "failed" and rows[jobs[1].id].failed_reason == "odd 1"
    assert rows[jobs[2].id].state == "completed" and rows[jobs[2].id].returnvalue == 2
    assert rows[waiting.id].state == "waiting"
    assert rows["phantom"].in_redis is False  # kept, never deleted
    assert rows[jobs[4].id].in_redis is False
    assert rows[jobs[4].id].returnvalue == 4
    assert sum(1 for row in rows.values() if row.in_redis) == 10
    assert result.marked_missing == 2


def test_reconcile_rebuilds_flows_from_scratch(flow_producer, flowjobs_settings):
    tree = flow_producer.add(
        Flow("root", "a", children=[Flow("mid", "b", children=[Flow("leaf", "c")])])
    )
    reconcile()
    root = JobRecord.objects.get(queue="a")
    assert root.job_id == tree.job.id and root.children_count == 1
    leaf = JobRecord.objects.get(queue="c")
    assert leaf.root_key == root.key
    assert JobRecord.objects.get(queue="b").parent_key == root.key


def test_syncjobs_once_mirrors_and_stores_positions(make_queue, prefix, flowjobs_settings):
    queue = make_queue("q")
    for i in range(3):
        queue.add("n", {"i": i})
    call_command("syncjobs", "--once", verbosity=0)
    assert JobRecord.objects.filter(queue="q", state="waiting").count() == 3
    position = StreamPosition.objects.get(prefix=prefix, queue="q")
    assert position.last_id == queue.client.xrevrange(queue.keys.key("events"), count=1)[0][0]


def test_projector_started_after_reconcile_only_replays_new_events(
    make_queue, make_projector, flowjobs_settings
):
    queue = make_queue("q")
    queue.add("n", {})
    reconcile()
    queue.add("m", {})
    projector = make_projector()
    projector.catch_up()
    assert projector.events_applied == 2
    assert JobRecord.objects.filter(queue="q").count() == 2


def _finished_set(rclient, key: str) -> dict[str, float]:
    """1,000 members finished ten to a millisecond, then 1,500 in one millisecond (a
    burst longer than a page), then 3 more."""
    members = {f"a{i}": 1000 + i // 10 for i in range(1000)}
    members.update({f"b{i}": 5000 for i in range(1500)})
    members.update({f"c{i}": 6000 for i in range(3)})
    rclient.zadd(key, members)
    return members


@pytest.mark.parametrize("page", [7, 1000])
def test_a_finished_set_is_read_by_score_once_each_page_after_page(rclient, prefix, page):
    from flowjobs.mirror.reconcile import _iter_structure

    key = f"{prefix}:q:completed"
    members = _finished_set(rclient, key)
    seen = [
        job_id
        for chunk in _iter_structure(rclient, key, "zset", page, min_score=1050)
        for job_id, _score in chunk
    ]
    assert sorted(seen) == sorted(job_id for job_id, score in members.items() if score >= 1050)
    assert len(seen) == len(set(seen))


@pytest.mark.parametrize("min_score", [0, None])
def test_members_removed_while_a_sorted_set_is_read_do_not_hide_the_rest(
    rclient, prefix, min_score
):
    """Retention removes the oldest finished jobs while a recovery pages through the
    set (and workers take the first prioritized jobs while a full reconcile pages
    through those): read by offset or rank, the next page started that many members too
    far, and the jobs it stepped over were never looked at."""
    from flowjobs.mirror.reconcile import _iter_structure

    key = f"{prefix}:q:completed"
    members = _finished_set(rclient, key)
    seen: list[str] = []
    for chunk in _iter_structure(rclient, key, "zset", 500, min_score=min_score):
        seen.extend(job_id for job_id, _score in chunk)
        if len(seen) == 500:
            rclient.zremrangebyrank(key, 0, 99)  # retention: the 100 oldest go
    assert set(seen) == set(members)
