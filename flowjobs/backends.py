"""The django.tasks backend, under the path ``TASKS`` names:
``"BACKEND": "flowjobs.backends.FlowJobsBackend"`` (documented in ``flowjobs.tasks``)."""

from __future__ import annotations

from .tasks.backend import FlowJobsBackend, FlowJobsTask

__all__ = ["FlowJobsBackend", "FlowJobsTask"]
