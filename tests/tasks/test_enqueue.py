"""Enqueueing Django tasks: options, validation, transactions, priorities, checks."""

from __future__ import annotations

import collections.abc
import dataclasses
import enum
from datetime import timedelta

import django
import pytest
from django.db import transaction
from django.tasks import TaskResult, TaskResultStatus, task, task_backends
from django.tasks.exceptions import InvalidTask, TaskResultDoesNotExist
from django.utils import timezone
from django.utils.json import normalize_json

from flowjobs import conf, registry
from flowjobs.tasks import FlowJobsTask, from_bullmq_priority, to_bullmq_priority
from flowjobs.tasks import task as flowjobs_task
from flowjobs.tasks.results import plain_json, plain_result
from tests.taskapp import tasks

from .test_running import finished


def test_priority_mapping_covers_djangos_range_in_order():
    assert [to_bullmq_priority(p) for p in (100, 1, 0, -1, -100)] == [1, 100, 101, 102, 201]
    for priority in range(-100, 101):
        assert from_bullmq_priority(to_bullmq_priority(priority)) == priority
    # unprioritized and foreign priorities read as Django's default
    assert from_bullmq_priority(0) == 0
    assert from_bullmq_priority(5000) == 0


def test_priority_and_queue_are_stored_on_the_job():
    result = tasks.add.using(priority=-30, queue_name="tasks-b").enqueue(1, 2)
    job = conf.get_queue("tasks-b").get_job(result.id)
    assert job.priority == 131
    assert job.get_state() == "prioritized"
    fetched = tasks.add.get_result(result.id)  # found in the backend's other queue
    assert fetched.task.priority == -30
    assert fetched.task.queue_name == "tasks-b"
    assert fetched.status == TaskResultStatus.READY


def test_job_id_is_the_result_id_and_adds_once():
    first = tasks.add.using(job_id="order-7").enqueue(1, 2)
    again = tasks.add.using(job_id="order-7").enqueue(5, 6)
    assert first.id == again.id == "order-7"
    assert conf.get_queue("tasks").get_job_counts("prioritized") == {"prioritized": 1}
    assert tasks.add.get_result("order-7").args == [1, 2]


def test_deduplication_returns_the_existing_task():
    first = tasks.add.using(deduplication={"id": "nightly"}).enqueue(1, 2)
    duplicate = tasks.add.using(deduplication={"id": "nightly"}).enqueue(3, 4)
    assert duplicate.id == first.id
    assert conf.get_queue("tasks").get_job_counts("prioritized") == {"prioritized": 1}


def test_options_from_the_decorator_reach_the_job():
    flaky_job = conf.get_queue("tasks").get_job(tasks.flaky.enqueue("x").id)
    assert flaky_job.opts["attempts"] == 2
    result = tasks.add.using(
        attempts=4,
        backoff={"type": "exponential", "delay": 250},
        job_options={"remove_on_complete": True, "keep_logs": 5},
    ).enqueue(1, 1)
    opts = conf.get_queue("tasks").get_job(result.id).opts
    assert opts["attempts"] == 4
    assert opts["backoff"] == {"type": "exponential", "delay": 250}
    assert opts["removeOnComplete"] is True
    assert opts["kl"] == 5


def test_the_queues_default_job_options_apply(settings, redis_url, prefix):
    settings.FLOWJOBS = {
        "REDIS_URL": redis_url,
        "PREFIX": prefix,
        "MIRROR": False,
        "QUEUES": {"tasks": {"DEFAULT_JOB_OPTIONS": {"attempts": 5}}},
    }
    result = tasks.add.enqueue(1, 1)
    assert conf.get_queue("tasks").get_job(result.id).opts["attempts"] == 5


def test_run_after_becomes_a_delay():
    run_after = timezone.now() + timedelta(minutes=10)
    result = tasks.add.using(run_after=run_after).enqueue(1, 1)
    job = conf.get_queue("tasks").get_job(result.id)
    assert job.get_state() == "delayed"
    # due when run_after is (the delay counts from the job's own timestamp)
    due_ms = job.timestamp + job.delay
    assert 0 <= due_ms - run_after.timestamp() * 1000 <= 1000
    in_the_past = tasks.add.using(run_after=timezone.now() - timedelta(minutes=1)).enqueue(1, 1)
    assert conf.get_queue("tasks").get_job_state(in_the_past.id) == "prioritized"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"queue_name": "elsewhere"}, "Queue 'elsewhere' is not valid for backend"),
        ({"priority": 101}, "priority must be a whole number between -100 and 100"),
        ({"attempts": 0}, "attempts must be an integer >= 1, got 0"),
        ({"attempts": "3"}, "attempts must be an integer >= 1"),
        ({"backoff": {"type": "fixed", "wait": 1}}, "backoff has unknown keys"),
        ({"job_id": "42"}, "looks like an automatic id"),
        ({"deduplication": "x"}, "deduplication must be a dict"),
        ({"deduplication": {"ttl": 5}}, "deduplication"),
        ({"job_options": {"delay": 5}}, "job_options may not set delay"),
        ({"job_options": {"remove_on_complete": "yes"}}, "remove_on_complete"),
        ({"enqueue_on_commit": "yes"}, "enqueue_on_commit must be True, False or None"),
    ],
)
def test_bad_options_are_invalid_tasks(change, message):
    with pytest.raises(InvalidTask, match=message) as caught:
        tasks.add.using(**change)
    assert str(caught.value).startswith("Task tests.taskapp.tasks.add: ")


def test_unknown_options_are_type_errors():
    with pytest.raises(TypeError, match="unknown option"):
        tasks.add.using(atempts=2)
    with pytest.raises(TypeError, match="atempts"):

        @task(backend="flowjobs", queue_name="tasks", atempts=2)
        def typo() -> None: ...


def test_flowjobs_task_takes_the_options_on_every_django_version():
    # tests.taskapp declares its tasks with it (flaky: attempts=2)
    assert isinstance(tasks.flaky, FlowJobsTask)
    assert (tasks.flaky.attempts, tasks.flaky.takes_context) == (2, True)
    made = flowjobs_task(backend="flowjobs", queue_name="tasks-b", priority=7, backoff=250)(
        tasks.add.func
    )
    assert (made.queue_name, made.priority, made.backoff, made.attempts) == (
        "tasks-b",
        7,
        250,
        None,
    )
    # without options (and without parentheses) it is Django's @task
    assert flowjobs_task(tasks.add.func) == task(tasks.add.func)
    with pytest.raises(TypeError, match="atempts"):
        flowjobs_task(backend="flowjobs", queue_name="tasks", atempts=2)(tasks.add.func)


def test_flowjobs_options_on_another_backend_are_a_type_error():
    with pytest.raises(
        TypeError, match="attempts are flowjobs options, and task backend 'default'"
    ):
        flowjobs_task(attempts=2)(tasks.add.func)  # "default" is Django's ImmediateBackend


@pytest.mark.skipif(django.VERSION < (6, 1), reason="Django 6.0's @task refuses extra options")
def test_djangos_own_task_passes_the_options_on_from_django_6_1():
    made = task(backend="flowjobs", queue_name="tasks", takes_context=True, attempts=2)(
        tasks.flaky.func
    )
    assert made == tasks.flaky


def test_arguments_must_be_json():
    with pytest.raises(TypeError, match="tasks.add: arguments must be JSON-serializable"):
        tasks.add.enqueue(object(), 1)
    assert conf.get_queue("tasks").get_job_counts("prioritized") == {"prioritized": 0}


def _shape(value):  # noqa: ANN001, ANN202 - the value with every part's exact type
    if isinstance(value, dict):
        return (dict, [(_shape(k), _shape(v)) for k, v in value.items()])
    if isinstance(value, list):
        return (list, [_shape(item) for item in value])
    return (type(value), value)


class _Level(enum.IntEnum):
    HIGH = 2


class _Pairs(collections.abc.Sequence):
    def __getitem__(self, index):  # noqa: ANN001, ANN204
        return [("a", 1), ("b", 2)][index]

    def __len__(self) -> int:
        return 2


def test_plain_json_is_djangos_normalization():
    """The enqueue's quick walk of the arguments gives what Django's normalize_json gives,
    exact types and subclasses alike, and refuses what it refuses with its errors."""
    values = [
        None, True, 0, -7, 2.5, "text", b"bytes", (1, (2, [3])), [("a", 1)],
        {"k": [1, {"n": None}], 2: "int key"}, collections.OrderedDict(a=1),
        {"level": _Level.HIGH}, _Pairs(), ["x", _Level.HIGH, {"deep": (True,)}],
        type("Text", (str,), {})("sub"),
    ]  # fmt: skip
    for value in values:
        assert _shape(plain_json(value)) == _shape(normalize_json(value)), value
    for bad in ({1, 2}, [object()], {"k": b"\xff"}):
        with pytest.raises((TypeError, ValueError)) as ours:
            plain_json(bad)
        with pytest.raises((TypeError, ValueError)) as djangos:
            normalize_json(bad)
        assert (type(ours.value), str(ours.value)) == (type(djangos.value), str(djangos.value))


def test_plain_result_is_the_result_djangos_constructor_makes():
    """The enqueue's result, made without TaskResult walking its arguments again, equals
    the one Django's constructor makes from the same values, field for field."""
    values = {
        "task": tasks.add,
        "id": "result-id",
        "status": TaskResultStatus.READY,
        "enqueued_at": timezone.now(),
        "started_at": None,
        "finished_at": None,
        "last_attempted_at": None,
        "args": plain_json((1, [2, {"k": (3,)}])),
        "kwargs": plain_json({"level": _Level.HIGH, "raw": b"text"}),
        "backend": "default",
        "errors": [],
        "worker_ids": [],
    }
    made, djangos = plain_result(**values), TaskResult(**values)
    assert type(made) is TaskResult
    assert made == djangos
    assert {f.name: getattr(made, f.name) for f in dataclasses.fields(TaskResult)} == {
        f.name: getattr(djangos, f.name) for f in dataclasses.fields(TaskResult)
    }
    with pytest.raises(ValueError, match="not finished"):
        _ = made.return_value


def test_the_enqueued_result_holds_its_own_copy_of_the_arguments():
    items, meta = [1, 2], {"k": "v"}
    result = tasks.add.enqueue(items, b=meta)  # enqueued only: nothing runs it here
    items.append(3)
    meta["k"] = "changed"
    assert (result.args, result.kwargs) == ([[1, 2]], {"b": {"k": "v"}})
    assert type(result) is TaskResult
    assert result.status == TaskResultStatus.READY and result.enqueued_at is not None


@pytest.mark.django_db(transaction=True)
def test_a_rolled_back_transaction_enqueues_nothing(task_signals):
    with pytest.raises(RuntimeError), transaction.atomic():
        result = tasks.add_on_commit.enqueue(1, 2)  # @task(..., enqueue_on_commit=True)
        assert result.status == TaskResultStatus.READY
        raise RuntimeError("roll back")

    with pytest.raises(TaskResultDoesNotExist):
        tasks.add_on_commit.get_result(result.id)
    assert conf.get_queue("tasks").count() == 0
    assert task_signals == []


@pytest.mark.django_db(transaction=True)
def test_enqueue_on_commit_writes_at_commit(task_worker, task_signals):
    with transaction.atomic():
        result = tasks.add_on_commit.enqueue(1, 2)
        with pytest.raises(TaskResultDoesNotExist):
            tasks.add_on_commit.get_result(result.id)
        assert result.enqueued_at is None
        assert task_signals == []
    assert [name for name, _, _ in task_signals] == ["enqueued"]
    assert result.enqueued_at is not None
    task_worker("tasks")
    assert finished(result).return_value == 3


@pytest.mark.django_db(transaction=True)
def test_without_enqueue_on_commit_the_job_is_written_at_once(task_signals):
    with pytest.raises(RuntimeError), transaction.atomic():
        result = tasks.add.enqueue(1, 2)
        assert tasks.add.get_result(result.id).status == TaskResultStatus.READY
        raise RuntimeError("roll back")
    assert tasks.add.get_result(result.id).status == TaskResultStatus.READY


@pytest.mark.django_db(transaction=True)
def test_backend_options_and_flowjobs_setting_choose_on_commit(settings, redis_url, prefix):
    settings.FLOWJOBS = {
        "REDIS_URL": redis_url,
        "PREFIX": prefix,
        "MIRROR": False,
        "ENQUEUE_ON_COMMIT": True,
    }
    with pytest.raises(RuntimeError), transaction.atomic():
        deferred = tasks.add.enqueue(1, 2)
        at_once = tasks.add.using(enqueue_on_commit=False).enqueue(1, 2)
        raise RuntimeError("roll back")
    with pytest.raises(TaskResultDoesNotExist):
        tasks.add.get_result(deferred.id)
    assert tasks.add.get_result(at_once.id).args == [1, 2]

    settings.TASKS = {
        **settings.TASKS,
        "flowjobs": {**settings.TASKS["flowjobs"], "OPTIONS": {"ENQUEUE_ON_COMMIT": False}},
    }
    with pytest.raises(RuntimeError), transaction.atomic():
        written = tasks.add.enqueue(1, 2)
        raise RuntimeError("roll back")
    assert tasks.add.get_result(written.id).args == [1, 2]


def test_checks_report_bad_configuration(settings):
    settings.TASKS = {
        "bad": {
            "BACKEND": "flowjobs.backends.FlowJobsBackend",
            "QUEUES": ["ok-tasks", "bad:name", "fj-echo"],
            "OPTIONS": {"ENQUEUE_ON_COMIT": True},
        },
        "empty": {"BACKEND": "flowjobs.backends.FlowJobsBackend", "QUEUES": []},
    }
    try:
        bad = {(m.id, m.msg) for m in task_backends["bad"].check()}
        empty = {m.id for m in task_backends["empty"].check()}
    finally:
        registry.unregister("ok-tasks")
    ids = {id_ for id_, _ in bad}
    assert ids == {"flowjobs.E102", "flowjobs.E103", "flowjobs.E104"}
    messages = " | ".join(message for _, message in bad)
    assert "'bad:name' contains ':'" in messages
    assert "ENQUEUE_ON_COMIT" in messages
    assert 'queue "fj-echo" already has the default processor' in messages
    assert empty == {"flowjobs.E101"}


def test_the_configured_backend_passes_its_checks(backend):
    assert backend.check() == []
    assert backend.supports_defer and backend.supports_async_task
    assert backend.supports_get_result and backend.supports_priority
