"""A django.tasks backend that does only what Django's contract asks of `enqueue` and
writes nothing: the READY `TaskResult` (whose arguments Django normalizes) and the
`task_enqueued` signal. bench/task_enqueue.py times it as the floor under any backend's
`Task.enqueue` on this interpreter."""

from __future__ import annotations

from typing import Any

from django.tasks.backends.base import BaseTaskBackend
from django.tasks.base import Task, TaskResult, TaskResultStatus
from django.tasks.signals import task_enqueued


class ContractOnly(BaseTaskBackend):
    supports_defer = True
    supports_priority = True

    def enqueue(self, task: Task, args: Any, kwargs: Any) -> TaskResult:
        result = TaskResult(
            task=task,
            id="contract-only",
            status=TaskResultStatus.READY,
            enqueued_at=None,
            started_at=None,
            finished_at=None,
            last_attempted_at=None,
            args=args,
            kwargs=kwargs,
            backend=self.alias,
            errors=[],
            worker_ids=[],
        )
        task_enqueued.send(type(self), task_result=result)
        return result
