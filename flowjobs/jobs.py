"""flowjobs' own processors, found by ``flowjobs.registry.autodiscover()`` like any app's
``jobs.py``: the task runner for every queue of a ``FlowJobsBackend`` in ``TASKS``, so
``manage.py runworker`` (no arguments) also runs Django tasks."""

from __future__ import annotations

try:
    import django.tasks  # noqa: F401 - Django 6+: the Tasks framework
except ImportError:  # an older Django has no tasks to run
    pass
else:
    from .tasks.execution import register_task_queues

    register_task_queues()
