"""Tasks for tests/tasks, declared with ``flowjobs.tasks.task`` (Django's ``@task``, which
takes the flowjobs options on Django 6.0 too) on the "flowjobs" backend (TASKS in
tests/settings.py). Extra keyword arguments are flowjobs options."""

from __future__ import annotations

import asyncio
from typing import Any

import redis
from django.tasks import TaskContext

from flowjobs.conf import settings
from flowjobs.tasks import task


class TaskBoom(Exception):
    """What the failing tasks raise."""


def _client() -> redis.Redis:
    return redis.Redis.from_url(settings().REDIS_URL, decode_responses=True)


def order_key() -> str:
    return f"{settings().PREFIX}:tasks-test:order"


@task(backend="flowjobs", queue_name="tasks")
def add(a: int, b: int) -> int:
    return a + b


@task(backend="flowjobs", queue_name="tasks")
def fail(message: str) -> None:
    raise TaskBoom(message)


@task(backend="flowjobs", queue_name="tasks", takes_context=True, attempts=2)
def flaky(context: TaskContext, label: str) -> dict[str, Any]:
    """Fails its first attempt, succeeds on the second."""
    if context.attempt == 1:
        raise TaskBoom(f"{label}: first attempt fails")
    return {"label": label, "attempt": context.attempt, "id": context.task_result.id}


@task(backend="flowjobs", queue_name="tasks")
def record(label: str) -> str:
    """Appends its label to a list, so a test sees the order tasks ran in."""
    client = _client()
    try:
        client.rpush(order_key(), label)
    finally:
        client.close()
    return label


@task(backend="flowjobs", queue_name="tasks")
async def async_add(a: int, b: int) -> int:
    await asyncio.sleep(0)
    return a + b


@task(backend="flowjobs", queue_name="tasks", enqueue_on_commit=True)
def add_on_commit(a: int, b: int) -> int:
    return a + b


@task(backend="flowjobs", queue_name="tasks")
def unserialisable() -> object:
    return object()


def not_a_task() -> str:
    return "plain functions never run from a task queue"
