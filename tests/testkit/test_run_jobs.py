"""run_jobs() and the pytest fixture, from pytest-django tests (SQLite, or PostgreSQL
with DATABASE_URL): jobs run in the test's thread, inside its transaction."""

from __future__ import annotations

import threading
import time

import pytest

from flowjobs import Flow, signals
from flowjobs.enqueue import enqueue, enqueue_flow
from flowjobs.testing import (
    JobsStillRunning,
    NoProcessorForQueue,
    isolated_flowjobs,
    run_jobs,
)
from tests.testapp.models import Note
from tests.testkit import processors  # noqa: F401 - registers the kit-* processors

pytestmark = pytest.mark.django_db


def test_on_commit_enqueue_runs_inside_the_test_transaction(
    flowjobs, django_capture_on_commit_callbacks
):
    received = []

    def on_completed(sender, job, result, **kwargs):
        # sent in the test's thread, after the job was recorded
        received.append((sender, job.id, threading.current_thread() is threading.main_thread()))

    signals.job_completed.connect(on_completed, dispatch_uid="kit-test")
    try:
        with django_capture_on_commit_callbacks(execute=True):
            note = Note.objects.create(text="order 7")
            assert enqueue("kit-orders", "confirm", {"note": note.pk}, on_commit=True) is None
            # nothing in Redis before the commit callbacks run
            assert flowjobs.queue("kit-orders").get_job_counts("waiting")["waiting"] == 0
        run = flowjobs.run_jobs("kit-orders")
    finally:
        signals.job_completed.disconnect(dispatch_uid="kit-test")

    assert [a.outcome for a in run.ran] == ["completed"]
    assert run.completed[0].result["confirmed"] == "order 7"
    assert run.completed[0].result["thread"] == threading.current_thread().name
    assert Note.objects.filter(text="confirmed order 7").count() == 1
    job_id = run.completed[0].job_id
    assert flowjobs.queue("kit-orders").get_job_state(job_id) == "completed"
    assert received == [("kit-orders", job_id, True)]


def test_on_commit_enqueue_inside_a_processor_happens(flowjobs):
    enqueue("kit-chain", "first", {}, on_commit=False)
    run = flowjobs.run_jobs("kit-chain")
    assert [(a.name, a.outcome) for a in run.ran] == [
        ("first", "completed"),
        ("second", "completed"),
    ]
    assert run.results("second") == [1]


def test_on_commit_enqueue_of_a_rolled_back_block_does_not_happen(flowjobs):
    enqueue("kit-chain", "first", {"then_fail": True}, on_commit=False)
    run = flowjobs.run_jobs("kit-chain")
    # the first block committed (its enqueue happened), the failing one rolled back
    assert sorted((a.name, a.outcome) for a in run.ran) == [
        ("first", "failed"),
        ("second", "completed"),
    ]


def test_async_processor_sees_the_test_transaction(flowjobs):
    Note.objects.bulk_create([Note(text="a"), Note(text="b")])
    enqueue("kit-orders", "count-async", on_commit=False)
    run = run_jobs(["kit-orders"])
    assert run.results("count-async") == [2]


def test_async_processor_uses_the_async_job_methods(flowjobs):
    Note.objects.create(text="a")
    job = enqueue("kit-orders", "progress-async", on_commit=False)
    run = run_jobs("kit-orders")
    assert run.results() == [1], str(run)
    stored = flowjobs.queue("kit-orders").get_job(job.id)
    assert stored.progress == 50
    assert flowjobs.queue("kit-orders").get_job_logs(job.id) == (["half way"], 1)


def test_retried_job_with_backoff_runs_at_once_with_run_delayed(flowjobs):
    job = enqueue(
        "kit-flaky",
        "flaky",
        {"fail_times": 2},
        attempts=3,
        backoff={"type": "exponential", "delay": 60_000},
        on_commit=False,
    )
    run = flowjobs.run_jobs("kit-flaky", run_delayed=True, timeout=10)
    assert [a.outcome for a in run.attempts_of(job.id)] == ["retried", "retried", "completed"]
    assert [a.number for a in run.ran] == [1, 2, 3]
    assert "flaky failure 1" in run.retried[0].traceback
    assert run.results() == ["succeeded on attempt 3"]
    stored = flowjobs.queue("kit-flaky").get_job(job.id)
    assert stored.attempts_made == 3 and stored.returnvalue == "succeeded on attempt 3"


def test_retry_waiting_out_its_backoff_is_left_without_run_delayed(flowjobs):
    job = enqueue(
        "kit-flaky", "flaky", {"fail_times": 1}, attempts=2, backoff=60_000, on_commit=False
    )
    run = flowjobs.run_jobs("kit-flaky")
    assert [a.outcome for a in run.ran] == ["retried"]
    assert run.left["kit-flaky"]["delayed"] == 1
    assert flowjobs.queue("kit-flaky").get_job_state(job.id) == "delayed"


def test_flow_with_a_failing_child(flowjobs):
    node = enqueue_flow(
        Flow(
            "assemble",
            "kit-assemble",
            children=[
                Flow("part", "kit-parts", {"n": 1}),
                Flow("part", "kit-parts", {"n": 2, "fail": True}, fail_parent_on_failure=True),
            ],
        ),
        on_commit=False,
    )
    run = flowjobs.run_jobs()  # every registered queue
    assert run.results("part") == [1]
    # the child, then its parent (failed by the engine, without running its processor)
    failure, parent_failure = run.failed
    assert parent_failure.name == "assemble" and parent_failure.job_id == node.job.id
    assert f"child {flowjobs.prefix}:kit-parts:{failure.job_id} failed" in str(parent_failure.error)
    assert failure.name == "part" and failure.data["n"] == 2
    assert isinstance(failure.error, ValueError)
    assert "part 2 is broken" in failure.traceback and "processors.py" in failure.traceback
    parent = flowjobs.queue("kit-assemble").get_job(node.job.id)
    assert parent.get_state() == "failed"
    assert "part 2 is broken" in str(run)


def test_flow_parent_runs_after_its_children(flowjobs):
    node = enqueue_flow(
        Flow(
            "assemble",
            "kit-assemble",
            children=[Flow("part", "kit-parts", {"n": n}) for n in (1, 2, 3)],
        ),
        on_commit=False,
    )
    run = flowjobs.run_jobs(["kit-parts", "kit-assemble"])
    assert [a.name for a in run.completed] == ["part", "part", "part", "assemble"]
    assert flowjobs.queue("kit-assemble").get_job(node.job.id).returnvalue == 6


def test_job_failed_before_its_processor_ran_is_reported(flowjobs):
    job = enqueue("kit-parts", "part", {"n": 1}, on_commit=False)
    with flowjobs.redis() as client:
        client.hset(f"{flowjobs.prefix}:kit-parts:{job.id}", "data", "{not json")
    run = flowjobs.run_jobs("kit-parts")
    [failure] = run.failed
    assert failure.job_id == job.id and "not valid JSON" in str(failure.error)
    assert "not valid JSON" in failure.traceback


def test_time_limit_raises_with_what_ran(flowjobs):
    """A queue that never empties (each job adds the next) is stopped at the limit, also
    while jobs follow each other without a pause (it ran on for minutes once jobs were
    quick enough that the pump never waited)."""
    enqueue("kit-forever", "again", {"n": 0}, on_commit=False)
    started = time.monotonic()
    with pytest.raises(JobsStillRunning, match="kit-forever still had jobs to run") as caught:
        flowjobs.run_jobs("kit-forever", timeout=0.5)
    assert time.monotonic() - started < 15  # the limit, then closing the worker
    assert len(caught.value.run.completed) >= 1


def test_unknown_queue_is_refused_before_anything_runs(flowjobs):
    enqueue("kit-parts", "part", {"n": 1}, on_commit=False)
    with pytest.raises(NoProcessorForQueue, match="no-such-queue"):
        flowjobs.run_jobs(["kit-parts", "no-such-queue"])
    assert flowjobs.queue("kit-parts").get_job_counts("waiting")["waiting"] == 1


def test_each_test_gets_its_own_prefix_and_its_keys_are_deleted(flowjobs, settings):
    assert settings.FLOWJOBS["PREFIX"] == flowjobs.prefix
    with isolated_flowjobs() as inner:
        assert inner.prefix != flowjobs.prefix
        enqueue("kit-parts", "part", {"n": 1}, on_commit=False)
        assert any(key.startswith(f"{inner.prefix}:kit-parts:") for key in inner.key_names())
    assert inner.key_names() == []
    assert settings.FLOWJOBS["PREFIX"] == flowjobs.prefix
