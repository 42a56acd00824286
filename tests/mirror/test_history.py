"""History: rows outlive Redis retention, and prunejobs bounds them."""

from __future__ import annotations

import datetime

import pytest
from django.core.management import call_command
from django.utils import timezone

from flowjobs.mirror import prune_history, reconcile
from flowjobs.models import JobRecord, UnstorableJob
from tests.helpers import wait_for

pytestmark = pytest.mark.django_db


def test_history_survives_remove_on_complete(make_queue, make_worker, make_projector):
    queue = make_queue("q")
    seen_early = [queue.add("early", {"i": i}, remove_on_complete=True) for i in range(3)]
    projector = make_projector()
    projector.catch_up()  # the rows exist while the jobs are still in Redis
    seen_late = [queue.add("late", {"i": i}, remove_on_complete=True) for i in range(3)]

    worker = make_worker("q", lambda job: {"double": job.data["i"] * 2})
    wait_for(lambda: not queue.client.exists(*[job.key for job in seen_early + seen_late]))
    worker.close()
    projector.catch_up()

    for job in seen_early:
        row = JobRecord.objects.get(queue="q", job_id=job.id)
        assert (row.state, row.in_redis) == ("completed", False)
        assert row.data == job.data  # copied while the job still existed
        assert row.returnvalue == {"double": job.data["i"] * 2}  # from the completed event
        assert row.finished_at is not None
    for job in seen_late:  # finished before the projector saw them: events only
        row = JobRecord.objects.get(queue="q", job_id=job.id)
        assert (row.name, row.state, row.in_redis) == ("late", "completed", False)
        assert row.returnvalue == {"double": job.data["i"] * 2}

    reconcile()  # a reconcile never deletes history
    assert JobRecord.objects.filter(queue="q", in_redis=False).count() == 6


def _history_row(queue: str, job_id: str, finished_days_ago: float, in_redis: bool = False):
    now = timezone.now()
    return JobRecord.objects.create(
        prefix="p",
        queue=queue,
        job_id=job_id,
        key=f"p:{queue}:{job_id}",
        state="completed",
        finished_at=now - datetime.timedelta(days=finished_days_ago),
        synced_at=now,
        in_redis=in_redis,
    )


def test_prune_by_age_and_count_keeps_live_rows():
    for i in range(5):
        _history_row("a", f"old{i}", finished_days_ago=10 + i)
        _history_row("a", f"new{i}", finished_days_ago=i * 0.1)
        _history_row("b", f"b{i}", finished_days_ago=i * 0.1)
    _history_row("a", "live", finished_days_ago=100, in_redis=True)

    assert prune_history(age=7 * 24 * 3600) == 5
    assert not JobRecord.objects.filter(job_id__startswith="old").exists()
    assert JobRecord.objects.filter(job_id="live").exists()

    assert prune_history(count=2) == 6  # 3 per queue
    assert set(JobRecord.objects.filter(queue="a").values_list("job_id", flat=True)) == {
        "new0",
        "new1",
        "live",
    }
    assert set(JobRecord.objects.filter(queue="b").values_list("job_id", flat=True)) == {
        "b0",
        "b1",
    }


def _unstorable(queue: str, job_id: str, seen_days_ago: float) -> None:
    seen = timezone.now() - datetime.timedelta(days=seen_days_ago)
    UnstorableJob.objects.create(
        digest=f"{queue}:{job_id}",
        prefix="p",
        queue=queue,
        job_id=job_id,
        reason="the job id holds a NUL character",
        first_seen=seen,
        last_seen=seen,
    )


@pytest.mark.parametrize("bound", ["age", "count"])
def test_a_row_the_mirror_finds_in_redis_again_while_pruning_is_kept(bound):
    """Pruning picks the rows to delete, then deletes them by id: a job the mirror
    found in Redis again in between (re-added under its id, or seen after a reconcile
    marked it missing) lost its row until its next event, or until the periodic
    reconcile when it had none."""
    from django.db import connection

    old = [_history_row("q", f"old-{i}", finished_days_ago=10) for i in range(3)]
    back = old[0]

    def mirror_writes_first(execute, sql, params, many, context):
        if sql.lstrip().upper().startswith("DELETE") and not mirror_writes_first.done:
            mirror_writes_first.done = True
            # the projector's upsert, committed between the prune's SELECT and its DELETE
            JobRecord.objects.filter(pk=back.pk).update(in_redis=True, state="waiting")
        return execute(sql, params, many, context)

    mirror_writes_first.done = False
    with connection.execute_wrapper(mirror_writes_first):
        if bound == "age":
            prune_history(age=86_400)
        else:
            prune_history(count=0)
    assert mirror_writes_first.done
    assert JobRecord.objects.filter(pk=back.pk, in_redis=True).exists()
    assert not JobRecord.objects.filter(pk__in=[row.pk for row in old[1:]]).exists()


def test_prune_bounds_the_unstorable_jobs_too():
    """A producer writing bad ids keeps adding UnstorableJob rows: the history bounds
    apply to them (by when the mirror last saw them), or the table grows for ever."""
    for i in range(4):
        _unstorable("a", f"old{i}", seen_days_ago=10 + i)
        _unstorable("a", f"new{i}", seen_days_ago=i * 0.1)
        _unstorable("b", f"b{i}", seen_days_ago=i * 0.1)

    assert prune_history(age=7 * 24 * 3600) == 4
    assert not UnstorableJob.objects.filter(job_id__startswith="old").exists()

    assert prune_history(count=1) == 6  # 3 per queue
    assert set(UnstorableJob.objects.values_list("job_id", flat=True)) == {"new0", "b0"}


def test_prunejobs_command_reads_the_history_setting(settings, flowjobs_settings):
    for i in range(4):
        _history_row("a", f"j{i}", finished_days_ago=i)
    settings.FLOWJOBS = {**flowjobs_settings, "MIRROR_HISTORY": {"age": None, "count": 1}}
    call_command("prunejobs", verbosity=0)
    assert list(JobRecord.objects.values_list("job_id", flat=True)) == ["j0"]


def test_prunejobs_options_override_and_dry_run(flowjobs_settings):
    for i in range(4):
        _history_row("a", f"j{i}", finished_days_ago=i * 2)
    call_command("prunejobs", "--age", str(3 * 24 * 3600), "--dry-run", verbosity=0)
    assert JobRecord.objects.count() == 4
    call_command("prunejobs", "--age", str(3 * 24 * 3600), verbosity=0)
    assert JobRecord.objects.count() == 2


def test_check_settings_reports_bad_mirror_settings(settings, flowjobs_settings):
    from flowjobs.mirror import check_settings

    assert check_settings() == []
    settings.FLOWJOBS = {
        **flowjobs_settings,
        "MIRROR_HISTORY": {"age": -1, "count": None},
        "MIRROR_BATCH_SIZE": 0,
    }
    problems = check_settings()
    assert any("MIRROR_BATCH_SIZE" in problem for problem in problems)
    assert any("MIRROR_HISTORY" in problem for problem in problems)
    settings.FLOWJOBS = {**flowjobs_settings, "MIRROR_BLOCK_MS": "soon"}
    assert check_settings() and "not valid" in check_settings()[0]
    settings.FLOWJOBS = {**flowjobs_settings, "PREFIX": "p" * 101}
    assert any("PREFIX is 101 characters long" in problem for problem in check_settings())
