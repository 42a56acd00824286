"""FlowJobsTestMixin with Django's own TestCase and TransactionTestCase (no pytest
fixtures): on-commit enqueues captured with captureOnCommitCallbacks."""

from __future__ import annotations

from django.conf import settings
from django.test import TestCase, TransactionTestCase

from flowjobs import Flow, FlowJobsError
from flowjobs.enqueue import enqueue, enqueue_flow
from flowjobs.testing import FlowJobsTestMixin
from tests.testapp.models import Note
from tests.testkit import processors  # noqa: F401 - registers the kit-* processors


class MixinInTestCase(FlowJobsTestMixin, TestCase):
    def test_on_commit_enqueue_then_run(self):
        with self.captureOnCommitCallbacks(execute=True):
            note = Note.objects.create(text="order 8")
            enqueue("kit-orders", "confirm", {"note": note.pk}, on_commit=True)
        run = self.run_jobs("kit-orders")
        self.assertEqual([a.outcome for a in run.ran], ["completed"])
        self.assertTrue(Note.objects.filter(text="confirmed order 8").exists())

    def test_retried_job(self):
        job = enqueue("kit-flaky", "flaky", {"fail_times": 1}, attempts=2, on_commit=False)
        run = self.run_jobs("kit-flaky")
        self.assertEqual([a.outcome for a in run.attempts_of(job.id)], ["retried", "completed"])

    def test_flow_with_a_failing_child(self):
        enqueue_flow(
            Flow(
                "assemble",
                "kit-assemble",
                children=[Flow("part", "kit-parts", {"n": 1, "fail": True})],
            ),
            on_commit=False,
        )
        run = self.run_jobs()
        self.assertEqual([a.name for a in run.failed], ["part"])
        self.assertIn("part 1 is broken", run.failed[0].traceback)
        # without fail_parent_on_failure the parent waits for its children for good
        self.assertEqual(run.left["kit-assemble"]["waiting-children"], 1)

    def test_settings_point_at_the_test_redis(self):
        self.assertEqual(settings.FLOWJOBS["PREFIX"], self.flowjobs.prefix)
        self.assertEqual(settings.FLOWJOBS["REDIS_URL"], self.flowjobs.redis_url)


class MixinInTransactionTestCase(FlowJobsTestMixin, TransactionTestCase):
    FLOWJOBS_OVERRIDES = {"ENQUEUE_ON_COMMIT": True}

    def test_enqueue_after_a_real_commit(self):
        from django.db import transaction

        with transaction.atomic():
            note = Note.objects.create(text="order 9")
            self.assertIsNone(enqueue("kit-orders", "confirm", {"note": note.pk}))
        run = self.run_jobs("kit-orders")
        self.assertEqual(run.results(), [run.completed[0].result])
        self.assertEqual(run.completed[0].result["confirmed"], "order 9")


class MixinWithoutSuperSetUp(FlowJobsTestMixin, TestCase):
    def setUp(self):
        pass  # forgot super().setUp()

    def test_run_jobs_says_what_is_missing(self):
        with self.assertRaisesMessage(FlowJobsError, "call super().setUp() in your setUp()"):
            self.run_jobs()
