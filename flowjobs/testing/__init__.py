"""flowjobs' test kit: run your processors and flows in tests, on a real Redis.

- ``run_jobs()``: the registered processors run the queued jobs in the test's thread
  (inside its database transaction) until the queues are idle; returns what ran.
- pytest: the ``flowjobs`` fixture (plugin ``flowjobs.testing.pytest_plugin``, loaded
  through its entry point) gives each test its own key prefix on a private redis-server.
- unittest / Django's test runner: ``FlowJobsTestMixin``.

Names are imported on first use, so that loading the pytest plugin (a submodule)
imports neither Django nor the kit. See docs/testing.md.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .environment import FlowJobsTestEnvironment, isolated_flowjobs
    from .in_process import Attempt, JobsRun, JobsStillRunning, NoProcessorForQueue, run_jobs
    from .mixin import FlowJobsTestMixin
    from .server import RedisServerMissing

_WHERE = {
    "Attempt": "in_process",
    "FlowJobsTestEnvironment": "environment",
    "FlowJobsTestMixin": "mixin",
    "JobsRun": "in_process",
    "JobsStillRunning": "in_process",
    "NoProcessorForQueue": "in_process",
    "RedisServerMissing": "server",
    "isolated_flowjobs": "environment",
    "run_jobs": "in_process",
}

__all__ = [
    "Attempt",
    "FlowJobsTestEnvironment",
    "FlowJobsTestMixin",
    "JobsRun",
    "JobsStillRunning",
    "NoProcessorForQueue",
    "RedisServerMissing",
    "isolated_flowjobs",
    "run_jobs",
]


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'flowjobs.testing' has no attribute {name!r}")
    return getattr(import_module(f"{__name__}.{module}"), name)
