"""``manage.py runworker --burst`` (no queue names) runs the task backend's queues."""

from __future__ import annotations

import re

import pytest
from django.tasks import TaskResultStatus

from flowjobs import conf
from tests.taskapp import tasks
from tests.taskapp.tasks import TaskBoom

pytestmark = pytest.mark.slow


def test_runworker_runs_tasks_in_priority_order(start_worker):
    priorities = {"low": -100, "normal-1": 0, "high": 100, "normal-2": 0, "soon": 10}
    results = [tasks.record.using(priority=p).enqueue(label) for label, p in priorities.items()]
    other_queue = tasks.add.using(queue_name="tasks-b").enqueue(4, 5)
    flaky = tasks.flaky.enqueue("sub")
    failing = tasks.fail.enqueue("nope")

    worker = start_worker("--burst", "--concurrency", "1")
    assert worker.wait(60) == 0, worker.output()
    assert re.search(r"queues .*\btasks, tasks-b\b", worker.output()), worker.output()

    client = conf.get_queue("tasks").client
    assert client.lrange(tasks.order_key(), 0, -1) == [
        "high",
        "soon",
        "normal-1",
        "normal-2",
        "low",
    ]
    for result in results:
        result.refresh()
        assert result.status == TaskResultStatus.SUCCESSFUL
        assert result.return_value in priorities
    pid = re.search(r"flowjobs worker (\S+) \(pid (\d+)\)", worker.output())
    assert pid, worker.output()
    assert results[0].worker_ids == [pid.group(1)]  # runworker's worker name, host:pid

    other_queue.refresh()
    assert other_queue.return_value == 9
    flaky.refresh()
    assert flaky.status == TaskResultStatus.SUCCESSFUL
    assert flaky.attempts == 2
    failing.refresh()
    assert failing.status == TaskResultStatus.FAILED
    assert failing.errors[0].exception_class is TaskBoom


def test_runworker_process_pool_runs_tasks(start_worker):
    result = tasks.flaky.enqueue("isolated")
    worker = start_worker("tasks", "--burst", "--pool", "process")
    assert worker.wait(60) == 0, worker.output()
    result.refresh()
    assert result.status == TaskResultStatus.SUCCESSFUL, worker.output()
    assert result.return_value["attempt"] == 2
    assert len(result.worker_ids) == 2
