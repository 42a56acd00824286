"""A throwaway Django project that uses flowjobs' test kit as a user would: written into a
temporary directory and run with the python of a venv that has the flowjobs WHEEL
installed (tests/conftest.py: wheel_python), never the source tree."""

from __future__ import annotations

import textwrap
from pathlib import Path

FILES = {
    "settings.py": """
        import os

        SECRET_KEY = "shop-tests"
        USE_TZ = True
        INSTALLED_APPS = [
            "django.contrib.contenttypes",
            "django.contrib.auth",
            "flowjobs",
            "shop",
        ]
        DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
        if os.environ.get("SHOP_DATABASE") == "postgresql":
            DATABASES = {"default": {
                "ENGINE": "django.db.backends.postgresql",
                "NAME": os.environ["SHOP_DB_NAME"],
                "USER": os.environ["SHOP_DB_USER"],
                "PASSWORD": os.environ["SHOP_DB_PASSWORD"],
                "HOST": os.environ["SHOP_DB_HOST"],
                "PORT": os.environ["SHOP_DB_PORT"],
                "TEST": {"NAME": os.environ["SHOP_DB_TEST_NAME"]},
            }}
        else:
            DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}}
        # Nothing listens on port 9: a test the kit did not point at its Redis fails loudly.
        FLOWJOBS = {"REDIS_URL": "redis://127.0.0.1:9/0"}
    """,
    "pytest.ini": """
        [pytest]
        DJANGO_SETTINGS_MODULE = settings
        addopts = -p no:cacheprovider
    """,
    "shop/__init__.py": "",
    "shop/models.py": """
        from django.db import models

        class Order(models.Model):
            item = models.CharField(max_length=50)
            status = models.CharField(max_length=20, default="new")
    """,
    "shop/jobs.py": """
        from flowjobs import processor
        from flowjobs.enqueue import enqueue
        from shop.models import Order

        @processor("orders", name="confirm")
        def confirm(job):
            # the order exists only inside the test's transaction
            order = Order.objects.get(pk=job.data["order"])
            order.status = "confirmed"
            order.save()
            return {"order": order.pk}

        @processor("payments")
        def charge(job):
            if job.attempts_made < 2:
                raise ConnectionError(f"payment gateway down (attempt {job.attempts_made + 1})")
            return "charged"

        @processor("parcels", name="pack")
        def pack(job):
            if job.data.get("broken"):
                raise ValueError(f"cannot pack {job.data['item']}")
            return job.data["item"]

        @processor("parcels", name="ship")
        def ship(job):
            return sorted(job.get_children_values().values())
    """,
    "shop/services.py": """
        from django.db import transaction

        from flowjobs import Flow
        from flowjobs.enqueue import enqueue, enqueue_flow
        from shop.models import Order

        def place_order(item):
            with transaction.atomic():
                order = Order.objects.create(item=item)
                enqueue("orders", "confirm", {"order": order.pk}, on_commit=True)
            return order

        def charge_later():
            return enqueue("payments", "charge", {}, attempts=3,
                           backoff={"type": "fixed", "delay": 30000}, on_commit=False)

        def ship_parcel(items, broken):
            children = [Flow("pack", "parcels", {"item": item, "broken": item == broken},
                             fail_parent_on_failure=True) for item in items]
            return enqueue_flow(Flow("ship", "parcels", {}, children=children), on_commit=False)
    """,
    "tests/__init__.py": "",
    "tests/checks.py": """
        # The three scenarios, written once, asserted from both kinds of test below.
        from shop import services
        from shop.models import Order


        def flow_with_a_failing_child(run_jobs):
            node = services.ship_parcel(["book", "vase"], broken="vase")
            run = run_jobs()
            assert run.results("pack") == ["book"], str(run)
            failure, parent_failure = run.failed  # the child, then the parent it failed
            assert parent_failure.job_id == node.job.id, str(run)
            assert failure.name == "pack" and "cannot pack vase" in failure.traceback
            assert 'shop/jobs.py' in failure.traceback
            assert node.job.queue.get_job_state(node.job.id) == "failed"


        def retried_job(run_jobs):
            job = services.charge_later()
            run = run_jobs("payments", run_delayed=True)
            assert [a.outcome for a in run.attempts_of(job.id)] == ["retried", "retried", "completed"]
            assert "payment gateway down (attempt 2)" in run.retried[1].traceback
            assert run.results() == ["charged"]


        def on_commit_enqueue(run_jobs, capture_on_commit):
            with capture_on_commit(execute=True) as callbacks:
                order = services.place_order("lamp")
                assert run_jobs("orders").ran == []  # not committed yet: nothing to run
            assert len(callbacks) == 1
            run = run_jobs("orders")
            assert run.results() == [{"order": order.pk}], str(run)
            order.refresh_from_db()
            assert order.status == "confirmed"
    """,
    "tests/test_with_pytest.py": """
        import pytest

        from tests import checks

        pytestmark = pytest.mark.django_db


        def test_flow_with_a_failing_child(flowjobs):
            checks.flow_with_a_failing_child(flowjobs.run_jobs)


        def test_retried_job(flowjobs):
            checks.retried_job(flowjobs.run_jobs)


        def test_on_commit_enqueue(flowjobs, django_capture_on_commit_callbacks):
            checks.on_commit_enqueue(flowjobs.run_jobs, django_capture_on_commit_callbacks)


        def test_database_is_the_one_asked_for(db):
            import os
            from django.db import connection

            assert connection.vendor == os.environ["SHOP_DATABASE"]


        def test_plugin_came_from_the_installed_wheel(request):
            import flowjobs.testing.pytest_plugin as plugin

            assert "site-packages" in plugin.__file__
    """,
    "tests/test_with_testcase.py": """
        from django.test import TestCase

        from flowjobs.testing import FlowJobsTestMixin
        from tests import checks


        class ShopTests(FlowJobsTestMixin, TestCase):
            def test_flow_with_a_failing_child(self):
                checks.flow_with_a_failing_child(self.run_jobs)

            def test_retried_job(self):
                checks.retried_job(self.run_jobs)

            def test_on_commit_enqueue(self):
                checks.on_commit_enqueue(self.run_jobs, self.captureOnCommitCallbacks)
    """,
}


def write_project(directory: Path) -> Path:
    for name, text in FILES.items():
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip())
    return directory
