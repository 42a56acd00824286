"""The demo's processors and flows, tested with flowjobs' test kit (``manage.py test demo``).

Each test gets the test run's private Redis under a key prefix of its own; ``run_jobs``
runs the processors in the test's thread until the queues are idle.
"""

from __future__ import annotations

from django.test import TestCase, override_settings

from flowjobs.enqueue import enqueue, enqueue_flow
from flowjobs.testing import FlowJobsTestMixin

from . import flows


@override_settings(DEMO_JOB_SECONDS=0)
class DemoFlowTests(FlowJobsTestMixin, TestCase):
    def test_report_combines_its_children(self):
        # ENQUEUE_ON_COMMIT is on in the demo's settings: the flow is added on commit
        with self.captureOnCommitCallbacks(execute=True):
            self.assertIsNone(enqueue_flow(flows.report_flow(1)))
        run = self.run_jobs(["reports", "report-fetch"])
        [report] = run.results("render")
        self.assertEqual(report["report"], "weekly report #1")
        self.assertEqual(report["sources"], ["sales", "traffic"])
        self.assertEqual(run.failed, [])

    def test_order_completes_when_the_optional_sms_fails(self):
        with self.captureOnCommitCallbacks(execute=True):
            enqueue_flow(flows.order_flow(1, sms_fails=True))
        run = self.run_jobs()
        self.assertEqual([a.name for a in run.failed], ["send-sms"])
        self.assertIn("SMS gateway refused", run.failed[0].traceback)
        [order] = run.results("complete-order")
        self.assertEqual(order["steps_done"], 2)
        self.assertEqual(len(order["optional_failures"]), 1)

    def test_etl_chain_runs_in_order(self):
        with self.captureOnCommitCallbacks(execute=True):
            enqueue_flow(flows.etl_flow(1))
        run = self.run_jobs("etl")
        self.assertEqual([a.name for a in run.completed], ["extract", "transform", "load"])
        self.assertEqual(run.results("load"), [{"loaded": 6, "table": "facts_1"}])

    def test_step_job_pauses_between_steps(self):
        job = enqueue("steps", "onboarding", {"user": "ann", "pause_ms": 60_000}, on_commit=False)
        left_alone = self.run_jobs("steps")
        self.assertEqual([a.outcome for a in left_alone.ran], ["moved"])
        self.assertEqual(left_alone.left["steps"]["delayed"], 1)
        run = self.run_jobs("steps", run_delayed=True)
        self.assertEqual([a.outcome for a in run.attempts_of(job.id)], ["moved", "completed"])
        self.assertEqual(run.results(), [{"user": "ann", "steps": 3}])

    def test_map_reduce(self):
        with self.captureOnCommitCallbacks(execute=True):
            enqueue_flow(flows.map_reduce_flow(chunks=4, chunk_size=10))
        run = self.run_jobs("mapreduce")
        self.assertEqual(
            run.results("reduce"), [{"chunks": 4, "sum_of_squares": sum(n * n for n in range(40))}]
        )
