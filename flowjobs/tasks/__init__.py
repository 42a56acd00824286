"""Django's Tasks framework (``django.tasks``) running on flowjobs.

    TASKS = {
        "default": {
            "BACKEND": "flowjobs.backends.FlowJobsBackend",
            "QUEUES": ["default", "emails"],          # flowjobs queues tasks may use
            "OPTIONS": {"ENQUEUE_ON_COMMIT": True},   # default: FLOWJOBS["ENQUEUE_ON_COMMIT"]
        },
    }

    from flowjobs.tasks import task  # Django's @task, with flowjobs' options on Django 6.0 too

    @task(priority=10, queue_name="emails", attempts=3, backoff={"type": "exponential", "delay": 1000})
    def send_welcome(user_id): ...

    result = send_welcome.enqueue(7)            # a job in queue "emails", id = result.id
    send_welcome.using(run_after=later).enqueue(8)
    send_welcome.get_result(result.id).status   # READY / RUNNING / SUCCESSFUL / FAILED

``manage.py runworker`` runs the task queues with the other registered queues.

How Django's names map onto the engine:

- a task is one job in the queue ``queue_name`` (which must be one of the backend's
  ``QUEUES``); its name is the task's module path and its data
  ``{"args": [...], "kwargs": {...}, "backend": alias}``; the job id is the TaskResult
  id (a UUID unless ``job_id`` is given);
- priority: BullMQ priority = 101 - Django priority (100 -> 1, 0 -> 101, -100 -> 201),
  so every task job is prioritized and higher Django priorities run first, FIFO within
  one priority. Jobs added to the same queue without a priority run before all tasks;
- ``run_after`` becomes the job's delay (counted from when the job is written);
- status: waiting / prioritized / delayed / waiting-children -> READY, active ->
  RUNNING, completed -> SUCCESSFUL, failed -> FAILED;
- ``worker_ids``: one per attempt (the worker's name, host:pid under runworker),
  recorded by the worker in the job's data as attempts start; ``errors``: one
  ``TaskError`` per failed attempt (class path + traceback), plus
  ``flowjobs.tasks.errors.TaskAborted`` with the engine's reason when the job failed
  outside the task function (stalled, cancelled, timed out, process died);
- ``enqueued_at`` is the job's timestamp, ``started_at`` the first attempt's start,
  ``last_attempted_at`` the latest, ``finished_at`` the job's finishedOn;
- results live as long as the jobs: ``remove_on_complete`` / ``remove_on_fail``
  (FLOWJOBS ``DEFAULT_JOB_OPTIONS``, a queue's, or the task's ``job_options``) decide
  when ``get_result`` starts raising ``TaskResultDoesNotExist``.

flowjobs options are extra keyword arguments of ``flowjobs.tasks.task`` (Django's
``@task``, taking them on Django 6.0 too), of Django 6.1's own ``@task(...)`` (which
passes them on to ``FlowJobsTask``) or of ``.using(...)``: ``attempts``, ``backoff``, ``job_id``,
``deduplication``, ``enqueue_on_commit`` and ``job_options``. Retries follow the
engine: a failed attempt with attempts left puts the task back to READY (after the
backoff); ``TaskContext.attempt`` is the number of the running attempt.

Signals: ``task_enqueued`` when the job is written (at commit with enqueue on commit;
never for a rolled-back transaction), ``task_started`` by the worker before each
attempt, ``task_finished`` once the task is SUCCESSFUL or finally FAILED. Receivers
that raise are logged and change nothing.
"""

from __future__ import annotations

import django
from django.core.exceptions import ImproperlyConfigured

if django.VERSION < (6, 0):
    raise ImproperlyConfigured(
        "flowjobs' django.tasks backend (flowjobs.backends.FlowJobsBackend) needs Django 6.0 "
        f"or newer, where django.tasks exists; this is Django {django.get_version()}. "
        "Everything else in flowjobs works on this version."
    )

from .backend import FlowJobsBackend, FlowJobsTask, task
from .errors import TaskAborted, UnknownTask
from .results import from_bullmq_priority, to_bullmq_priority

__all__ = [
    "FlowJobsBackend",
    "FlowJobsTask",
    "TaskAborted",
    "UnknownTask",
    "from_bullmq_priority",
    "task",
    "to_bullmq_priority",
]
