from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from django.contrib.auth.models import Permission
from django.test import Client

from flowjobs.engine import Flow, FlowProducer, Queue
from flowjobs.mirror import reconcile
from flowjobs.models import JobRecord
from tests.helpers import wait_for
from tests.mirror.support import *  # noqa: F403 (shared fixtures)

ACTION_PERMISSIONS = ("retry_job", "remove_job", "promote_job", "pause_queue")


@pytest.fixture
def make_user(django_user_model: Any) -> Callable[..., Any]:
    def make(username: str, *, staff: bool = True, perms: tuple[str, ...] = ()) -> Any:
        user = django_user_model.objects.create_user(username, password="pw", is_staff=staff)
        for codename in perms:
            user.user_permissions.add(
                Permission.objects.get(content_type__app_label="flowjobs", codename=codename)
            )
        return user

    return make


@pytest.fixture
def login(make_user: Callable[..., Any]) -> Callable[..., Client]:
    def make(*perms: str, staff: bool = True, csrf: bool = False) -> Client:
        client = Client(enforce_csrf_checks=csrf)
        name = f"u{len(perms)}{'s' if staff else 'n'}{'c' if csrf else ''}"
        client.force_login(make_user(name, staff=staff, perms=perms))
        return client

    return make


@dataclass
class Jobs:
    root: JobRecord
    middle: JobRecord
    failed: JobRecord
    delayed: JobRecord
    waiting: JobRecord
    queue: Queue


def _fail(job: Any) -> Any:
    raise RuntimeError("extract went wrong")


@pytest.fixture
def jobs(
    flowjobs_settings: Any,
    flow_producer: FlowProducer,
    make_queue: Callable[..., Queue],
    make_worker: Callable[..., Any],
) -> Jobs:
    """A 3-level flow whose leaf failed, plus a delayed and a waiting job, mirrored."""
    tree = flow_producer.add(
        Flow(
            "report",
            "reports",
            data={"report": 1},
            children=[Flow("extract", "etl", children=[Flow("fetch", "fetchers")])],
        )
    )
    fetchers = make_queue("fetchers")
    worker = make_worker("fetchers", _fail)
    leaf_id = tree.children[0].children[0].job.id
    wait_for(lambda: fetchers.get_job_state(leaf_id) == "failed", message="leaf failed")
    worker.close()
    other = make_queue("other")
    delayed = other.add("later", {"x": 1}, delay=3_600_000)
    waiting = other.add("now", {"x": 2})
    reconcile()
    rows = JobRecord.objects
    return Jobs(
        root=rows.get(queue="reports", job_id=tree.job.id),
        middle=rows.get(queue="etl"),
        failed=rows.get(queue="fetchers", job_id=leaf_id),
        delayed=rows.get(queue="other", job_id=delayed.id),
        waiting=rows.get(queue="other", job_id=waiting.id),
        queue=fetchers,
    )
