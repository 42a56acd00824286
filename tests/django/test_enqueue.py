"""Transaction-safe enqueue: nothing reaches Redis until (and unless) the commit."""

from __future__ import annotations

import pytest
from django.db import transaction

from flowjobs import Flow, InvalidJobData, InvalidJobOptions, conf
from flowjobs.enqueue import enqueue, enqueue_bulk, enqueue_flow
from tests.testapp.models import Note

pytestmark = pytest.mark.django_db(transaction=True)


class Rollback(Exception):
    pass


def _waiting(queue_name: str) -> int:
    return conf.get_queue(queue_name).get_job_counts("waiting")["waiting"]


def test_committed_transaction_enqueues_at_commit():
    with transaction.atomic():
        Note.objects.create(text="order 1")
        assert enqueue("orders", "confirm", {"order": 1}, on_commit=True) is None
        assert _waiting("orders") == 0  # not before the commit
    assert _waiting("orders") == 1
    (job,) = conf.get_queue("orders").get_jobs(["waiting"])
    assert (job.name, job.data) == ("confirm", {"order": 1})


def test_rolled_back_transaction_enqueues_nothing():
    with pytest.raises(Rollback), transaction.atomic():
        enqueue("orders", "confirm", {"order": 1}, on_commit=True)
        enqueue_bulk("orders", [{"name": "a"}, {"name": "b"}], on_commit=True)
        enqueue_flow(Flow("parent", "orders", children=[Flow("child", "orders")]), on_commit=True)
        raise Rollback
    assert conf.get_queue("orders").get_job_counts() == {
        "waiting": 0,
        "active": 0,
        "prioritized": 0,
        "delayed": 0,
        "completed": 0,
        "failed": 0,
        "waiting-children": 0,
    }


def test_rolled_back_savepoint_drops_only_its_jobs():
    with transaction.atomic():
        enqueue("orders", "kept", on_commit=True)
        with pytest.raises(Rollback), transaction.atomic():
            enqueue("orders", "dropped", on_commit=True)
            raise Rollback
    assert [j.name for j in conf.get_queue("orders").get_jobs(["waiting"])] == ["kept"]


def test_validation_happens_at_the_call_not_at_the_commit():
    with transaction.atomic():
        with pytest.raises(InvalidJobOptions, match="priority"):
            enqueue("orders", "confirm", {}, priority=-1, on_commit=True)
        with pytest.raises(InvalidJobData):
            enqueue("orders", "confirm", {"when": object()}, on_commit=True)
        with pytest.raises(InvalidJobOptions, match="unknown keys"):
            enqueue_bulk("orders", [{"name": "a", "extra": 1}], on_commit=True)
        with pytest.raises(InvalidJobOptions):
            enqueue_flow(
                Flow("p", "orders", children=[Flow("c", "orders", bogus=1)]), on_commit=True
            )
        Note.objects.create(text="still fine")
    assert _waiting("orders") == 0
    assert Note.objects.count() == 1


def test_without_on_commit_the_job_is_written_at_once():
    with pytest.raises(Rollback), transaction.atomic():
        job = enqueue("orders", "now", {"n": 1})
        assert job is not None and _waiting("orders") == 1
        raise Rollback
    assert _waiting("orders") == 1


def test_enqueue_on_commit_setting_is_the_default(settings):
    settings.FLOWJOBS = {**settings.FLOWJOBS, "ENQUEUE_ON_COMMIT": True}
    with transaction.atomic():
        assert enqueue("orders", "deferred") is None
        assert enqueue("orders", "immediate", on_commit=False) is not None
        assert _waiting("orders") == 1
    assert _waiting("orders") == 2


def test_outside_a_transaction_on_commit_writes_at_once():
    job = enqueue("orders", "now", {"n": 2}, on_commit=True)
    assert job is not None and job.data == {"n": 2}


def test_bulk_and_flow_are_written_at_commit():
    with transaction.atomic():
        enqueue_bulk("orders", [{"name": "a", "data": {"i": 1}}, {"name": "b"}], on_commit=True)
        enqueue_flow(
            {
                "name": "parent",
                "queue_name": "orders",
                "children": [
                    {"name": "child", "queue_name": "fetch", "data": {"x": 1}},
                ],
            },
            on_commit=True,
        )
        assert _waiting("orders") == 0 and _waiting("fetch") == 0
    assert sorted(j.name for j in conf.get_queue("orders").get_jobs(["waiting"])) == ["a", "b"]
    assert conf.get_queue("orders").get_job_counts("waiting-children")["waiting-children"] == 1
    assert _waiting("fetch") == 1


def test_default_job_options_come_from_settings(settings):
    settings.FLOWJOBS = {
        **settings.FLOWJOBS,
        "DEFAULT_JOB_OPTIONS": {"attempts": 4},
        "QUEUES": {"orders": {"DEFAULT_JOB_OPTIONS": {"priority": 5}}},
    }
    job = enqueue("orders", "x")
    assert job.opts["attempts"] == 4 and job.opts["priority"] == 5
    other = enqueue("other", "x")
    assert other.opts["attempts"] == 4 and "priority" not in other.opts
    tree = enqueue_flow(Flow("p", "orders", children=[Flow("c", "other")]))
    assert tree.job.opts["priority"] == 5 and tree.job.opts["attempts"] == 4
    assert tree.children[0].job.opts["attempts"] == 4
