"""Django tasks through Django's public API, run by a real flowjobs Worker (in a thread)."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from django.tasks import TaskResultStatus
from django.tasks.exceptions import TaskResultDoesNotExist, TaskResultMismatch
from django.utils import timezone

from flowjobs import conf
from flowjobs.backends import FlowJobsBackend
from flowjobs.tasks import TaskAborted
from tests.helpers import (
    MISSING_ROLE,
    current_user_under_a_missing_role,
    skip_unless_postgresql,
    wait_for,
)
from tests.taskapp import tasks
from tests.taskapp.tasks import TaskBoom

from .conftest import WORKER_NAME


def finished(result):  # noqa: ANN001, ANN201
    def check() -> bool:
        result.refresh()
        return result.is_finished

    wait_for(check, timeout=15, message=f"task {result.id} never finished")
    return result


def test_success_with_a_return_value(task_worker, task_signals):
    result = tasks.add.enqueue(2, 3)
    assert result.status == TaskResultStatus.READY
    assert result.args == [2, 3] and result.kwargs == {}
    assert result.backend == "flowjobs"
    assert result.enqueued_at is not None
    assert len(result.id) == 32 and int(result.id, 16) >= 0  # a uuid4 hex

    # the job: the task's module path, args/kwargs as JSON, id = the TaskResult id
    job = conf.get_queue("tasks").get_job(result.id)
    assert job.name == "tests.taskapp.tasks.add"
    assert job.data == {"args": [2, 3], "kwargs": {}, "backend": "flowjobs"}
    assert job.priority == 101  # Django's default priority 0
    waiting = tasks.add.get_result(result.id)
    assert waiting.status == TaskResultStatus.READY
    assert waiting.started_at is None and waiting.worker_ids == []

    task_worker("tasks")
    finished(result)

    assert result.status == TaskResultStatus.SUCCESSFUL
    assert result.return_value == 5
    assert result.errors == []
    assert result.worker_ids == [WORKER_NAME]
    assert result.attempts == 1
    assert result.enqueued_at <= result.started_at <= result.finished_at
    assert result.last_attempted_at == result.started_at
    fetched = tasks.add.get_result(result.id)
    assert fetched.return_value == 5
    assert fetched.task.func is tasks.add.func
    assert fetched.task.queue_name == "tasks"
    assert [(name, sender, seen["status"]) for name, sender, seen in task_signals] == [
        ("enqueued", FlowJobsBackend, TaskResultStatus.READY),
        ("started", FlowJobsBackend, TaskResultStatus.RUNNING),
        ("finished", FlowJobsBackend, TaskResultStatus.SUCCESSFUL),
    ]
    assert task_signals[1][2]["worker_ids"] == [WORKER_NAME]


def test_failure_keeps_the_exception_class_and_traceback(task_worker, task_signals):
    result = tasks.fail.enqueue("kaput")
    task_worker("tasks")
    finished(result)

    assert result.status == TaskResultStatus.FAILED
    assert len(result.errors) == 1
    error = result.errors[0]
    assert error.exception_class_path == "tests.taskapp.tasks.TaskBoom"
    assert error.exception_class is TaskBoom
    assert "Traceback (most recent call last)" in error.traceback
    assert "raise TaskBoom(message)" in error.traceback
    assert error.traceback.rstrip().endswith("TaskBoom: kaput")
    with pytest.raises(ValueError, match="Task failed"):
        result.return_value  # noqa: B018 - the property raises
    assert result.finished_at is not None
    assert [(name, seen["status"], seen["errors"]) for name, _, seen in task_signals] == [
        ("enqueued", TaskResultStatus.READY, 0),
        ("started", TaskResultStatus.RUNNING, 0),
        ("finished", TaskResultStatus.FAILED, 1),
    ]


def test_retry_then_success_counts_two_attempts(task_worker, task_signals):
    result = tasks.flaky.enqueue("again")  # @task(..., attempts=2, takes_context=True)
    task_worker("tasks")
    finished(result)

    assert result.status == TaskResultStatus.SUCCESSFUL
    # the context's attempt number: 1 failed, 2 returned
    assert result.return_value == {"label": "again", "attempt": 2, "id": result.id}
    assert result.attempts == 2
    assert result.worker_ids == [WORKER_NAME, WORKER_NAME]
    assert [e.exception_class for e in result.errors] == [TaskBoom]
    assert "again: first attempt fails" in result.errors[0].traceback
    assert result.started_at < result.last_attempted_at <= result.finished_at
    # a failed attempt with attempts left is no finish: the task is READY again
    assert [(name, seen["status"], seen["worker_ids"]) for name, _, seen in task_signals] == [
        ("enqueued", TaskResultStatus.READY, []),
        ("started", TaskResultStatus.RUNNING, [WORKER_NAME]),
        ("started", TaskResultStatus.RUNNING, [WORKER_NAME, WORKER_NAME]),
        ("finished", TaskResultStatus.SUCCESSFUL, [WORKER_NAME, WORKER_NAME]),
    ]


def test_attempts_exhausted_fail_with_every_error(task_worker):
    result = tasks.fail.using(attempts=3).enqueue("every time")
    task_worker("tasks")
    finished(result)
    assert result.status == TaskResultStatus.FAILED
    assert result.attempts == 3
    assert [e.exception_class for e in result.errors] == [TaskBoom, TaskBoom, TaskBoom]


def test_deferred_task_runs_after_run_after(task_worker):
    run_after = timezone.now() + timedelta(seconds=1.5)
    result = tasks.add.using(run_after=run_after).enqueue(1, 1)
    queue = conf.get_queue("tasks")
    assert queue.get_job_state(result.id) == "delayed"
    task_worker("tasks")
    assert tasks.add.get_result(result.id).status == TaskResultStatus.READY

    finished(result)
    assert result.return_value == 2
    assert result.started_at >= run_after
    assert tasks.add.get_result(result.id).task.run_after is not None


def test_priority_order_in_process(task_worker):
    expected = ["p100", "p50", "p0-a", "p0-b", "m5", "m100"]
    priorities = {"m100": -100, "p0-a": 0, "p50": 50, "m5": -5, "p0-b": 0, "p100": 100}
    results = [tasks.record.using(priority=p).enqueue(label) for label, p in priorities.items()]
    task_worker("tasks", concurrency=1)
    for result in results:
        finished(result)
    client = conf.get_queue("tasks").client
    assert client.lrange(tasks.order_key(), 0, -1) == expected


def test_async_task_through_aenqueue_and_aget_result(task_worker):
    async def produce():  # noqa: ANN202
        return await tasks.async_add.aenqueue(20, b=22)

    result = asyncio.run(produce())
    assert result.kwargs == {"b": 22}
    task_worker("tasks")
    finished(result)

    async def read():  # noqa: ANN202
        return await tasks.async_add.aget_result(result.id)

    fetched = asyncio.run(read())
    assert fetched.status == TaskResultStatus.SUCCESSFUL
    assert fetched.return_value == 42


def test_a_return_value_that_is_not_json_fails_the_task(task_worker):
    result = tasks.unserialisable.enqueue()
    task_worker("tasks")
    finished(result)
    assert result.status == TaskResultStatus.FAILED
    assert result.errors[0].exception_class is TypeError


def test_unknown_task_paths_fail_the_job_without_retries(task_worker):
    queue = conf.get_queue("tasks")
    arguments = {"args": [], "kwargs": {}}
    missing = queue.add("tests.taskapp.tasks.missing", arguments, attempts=3)
    plain = queue.add("tests.taskapp.tasks.not_a_task", arguments, attempts=3)
    shell = queue.add("os.system", {"args": ["touch /tmp/never"], "kwargs": {}}, attempts=3)
    shapeless = queue.add("tests.taskapp.tasks.add", [1, 2], attempts=3)
    good = tasks.add.enqueue(1, 2)
    task_worker("tasks")
    finished(good)

    def failed(job_id: str):  # noqa: ANN202
        wait_for(lambda: queue.get_job_state(job_id) == "failed", timeout=15)
        return queue.get_job(job_id)

    job = failed(missing.id)
    assert 'no task at "tests.taskapp.tasks.missing"' in job.failed_reason
    assert job.attempts_made == 1  # unrecoverable: retrying cannot help
    assert "'tests.taskapp.tasks.not_a_task' is not a @task" in failed(plain.id).failed_reason
    assert "'os.system' is not a @task" in failed(shell.id).failed_reason
    assert "its data is a JSON list, not an object" in failed(shapeless.id).failed_reason
    # Django's API cannot build a result for a path it cannot import either, and says why
    with pytest.raises(TaskResultDoesNotExist, match="cannot be imported here"):
        tasks.add.get_result(missing.id)
    assert good.return_value == 3


def test_results_of_other_tasks_and_unknown_ids(task_worker):
    result = tasks.add.enqueue(1, 2)
    with pytest.raises(TaskResultMismatch):
        tasks.fail.get_result(result.id)
    with pytest.raises(TaskResultDoesNotExist):
        tasks.add.get_result("no-such-task")
    with pytest.raises(TaskResultDoesNotExist):
        tasks.add.get_result("wait")  # one of the queue's own keys, not a job
    # jobs of the same queue that are not tasks are no results
    queue = conf.get_queue("tasks")
    queue.add("plain-job", {"x": 1}, job_id="plain-1")
    queue.add("os.path.join", {"args": [], "kwargs": {}}, job_id="plain-2")
    with pytest.raises(TaskResultDoesNotExist, match='no task at "plain-job"'):
        tasks.add.get_result("plain-1")
    with pytest.raises(TaskResultDoesNotExist, match="'os.path.join' is not a @task"):
        tasks.add.get_result("plain-2")


def test_failure_outside_the_task_function_is_an_aborted_error(task_worker):
    # a job the engine failed by itself (here: moved to failed by hand, as the stalled
    # checker or a cancellation would) still reads as a FAILED TaskResult with a reason
    result = tasks.add.enqueue(1, 2)
    queue = conf.get_queue("tasks")
    from flowjobs.engine import Worker

    manual = Worker("tasks", None, connection=queue.connection, prefix=queue.prefix)
    try:
        job = manual.get_next_job("tok", block=False)
        assert job.id == result.id
        job.move_to_failed(RuntimeError("stalled too often"), "tok")
    finally:
        manual.close()
    result.refresh()
    assert result.status == TaskResultStatus.FAILED
    assert [e.exception_class for e in result.errors] == [TaskAborted]
    assert "stalled too often" in result.errors[0].traceback


@pytest.mark.django_db(transaction=True)
def test_a_signal_receiver_whose_connect_failed_halfway_leaves_no_connection_behind(
    task_worker, missing_role_threads
):
    """A ``task_started`` receiver that raised is logged and the task runs on; a
    connection whose ``connect()`` failed halfway in it (PostgreSQL: a role that cannot
    be assumed) must not serve the next task in that thread, which ran as the login role
    before the fix."""
    from django.db import DatabaseError
    from django.tasks.signals import task_started

    skip_unless_postgresql()
    threads = missing_role_threads
    outcomes: list[tuple[str, object]] = []

    def whoami(sender, task_result, **kwargs):  # noqa: ANN001, ANN202
        try:
            outcomes.append(("ran as", current_user_under_a_missing_role(threads)))
        except DatabaseError as error:
            outcomes.append(("failed", MISSING_ROLE in str(error)))
            raise

    first, second = tasks.add.enqueue(1, 2), tasks.add.enqueue(3, 4)
    task_started.connect(whoami)
    try:
        task_worker("tasks")  # one thread runs both, one after the other
        finished(first)
        finished(second)
    finally:
        task_started.disconnect(whoami)
    assert (first.status, second.status) == (TaskResultStatus.SUCCESSFUL,) * 2
    assert len(threads) == 1
    assert outcomes == [("failed", True), ("failed", True)]
