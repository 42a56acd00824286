"""Fixtures for the django.tasks backend tests: FLOWJOBS on the private Redis, a real
engine Worker in a thread for a task queue, and ``runworker`` subprocesses."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from django.tasks import task_backends
from django.tasks.signals import task_enqueued, task_finished, task_started

from flowjobs import conf, registry
from flowjobs.engine import Worker
from tests.django.conftest import start_worker, worker_env  # noqa: F401 - fixtures

WORKER_NAME = "task-worker-1"


@pytest.fixture(autouse=True)
def flowjobs_settings(settings, redis_url: str, prefix: str):  # noqa: ANN001, ANN201
    """Every test talks to the private Redis under its own key prefix."""
    settings.FLOWJOBS = {"REDIS_URL": redis_url, "PREFIX": prefix, "MIRROR": False}
    yield settings
    conf.reset()


@pytest.fixture
def task_worker(redis_url: str, prefix: str) -> Iterator[Callable[..., Worker]]:
    """Starts an engine Worker in a thread with the processor runworker would use for
    the queue (the one flowjobs registered for the task backend's queues)."""
    started: list[tuple[Worker, registry.Dispatcher]] = []

    def start(queue: str = "tasks", name: str = WORKER_NAME, concurrency: int = 1) -> Worker:
        dispatcher = registry.get_dispatcher(queue, concurrency)
        worker = Worker(
            queue,
            dispatcher.as_processor(),
            connection=redis_url,
            prefix=prefix,
            concurrency=concurrency,
            name=name,
            drain_delay=0.5,
        )
        started.append((worker, dispatcher))
        return worker

    yield start
    for worker, dispatcher in started:
        worker.close(force=True, timeout=5)
        dispatcher.close()


@pytest.fixture
def task_signals() -> Iterator[list[tuple[str, Any, Any]]]:
    """(signal name, sender, snapshot of the TaskResult's status and attempts) per signal
    sent, in order."""
    seen: list[tuple[str, Any, Any]] = []

    def receiver(name: str) -> Callable[..., None]:
        def receive(sender: Any, task_result: Any, **kwargs: Any) -> None:
            seen.append(
                (
                    name,
                    sender,
                    {
                        "id": task_result.id,
                        "status": task_result.status,
                        "worker_ids": list(task_result.worker_ids),
                        "errors": len(task_result.errors),
                    },
                )
            )

        return receive

    receivers = {
        task_enqueued: receiver("enqueued"),
        task_started: receiver("started"),
        task_finished: receiver("finished"),
    }
    for signal, function in receivers.items():
        signal.connect(function, weak=False)
    yield seen
    for signal, function in receivers.items():
        signal.disconnect(function)


@pytest.fixture
def backend() -> Any:
    return task_backends["flowjobs"]
