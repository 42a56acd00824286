"""``FlowJobsTestMixin``: the test kit for unittest / Django test runner projects."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ..engine import FlowJobsError
from .environment import FlowJobsTestEnvironment, isolated_flowjobs
from .in_process import JobsRun

__all__ = ["FlowJobsTestMixin"]


class FlowJobsTestMixin:
    """Put it before Django's ``TestCase`` (or ``TransactionTestCase``)::

        class OrderTests(FlowJobsTestMixin, TestCase):
            def test_confirm(self):
                with self.captureOnCommitCallbacks(execute=True):
                    place_order()          # enqueues on commit
                run = self.run_jobs()
                self.assertEqual(run.failed, [])

    Every test gets ``FLOWJOBS`` pointed at the test run's private Redis under a key
    prefix of its own (``self.flowjobs`` says which), deleted when the test ends.
    ``FLOWJOBS_OVERRIDES`` (a dict) adds settings for the class's tests.
    """

    FLOWJOBS_OVERRIDES: dict[str, Any] = {}
    flowjobs: FlowJobsTestEnvironment

    def setUp(self) -> None:
        super().setUp()  # type: ignore[misc]
        self.flowjobs = self.enterContext(  # type: ignore[attr-defined]
            isolated_flowjobs(**self.FLOWJOBS_OVERRIDES)
        )

    def run_jobs(self, queues: Iterable[str] | str | None = None, **options: Any) -> JobsRun:
        """``flowjobs.testing.run_jobs`` (same arguments)."""
        environment = getattr(self, "flowjobs", None)
        if environment is None:
            raise FlowJobsError(
                f"{type(self).__name__}: FlowJobsTestMixin.setUp() did not run, so FLOWJOBS "
                "is not pointed at the test Redis; call super().setUp() in your setUp()"
            )
        return environment.run_jobs(queues, **options)
