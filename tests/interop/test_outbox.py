"""A flow enqueued on commit through the outbox (issue 15), left for the relay because
Redis hung at the commit, completes in a real Node.js BullMQ worker."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis
from django.db import transaction

from flowjobs import Flow, conf, outbox
from flowjobs.enqueue import enqueue_flow
from flowjobs.models import OutboxEntry
from tests.redis_server import RedisServer

from .node import NodeHarness

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def flowjobs_on_test_redis(settings, redis_url: str, prefix: str) -> Iterator[None]:  # noqa: ANN001
    settings.FLOWJOBS = {
        "REDIS_URL": redis_url,
        "PREFIX": prefix,
        "MIRROR": False,
        "OUTBOX_PUSH_TIMEOUT": 0.3,
    }
    yield
    conf.reset()


def test_flow_through_the_outbox_completes_in_node(
    flowjobs_on_test_redis: None,
    redis_server: RedisServer,
    node: NodeHarness,
    r: redis.Redis,
    prefix: str,
) -> None:
    tree = Flow(
        "report",
        "ob-top",
        {"report": 7},
        children=[Flow("fetch", "ob-leaves", {"leaf": leaf}) for leaf in ("a", "b")],
    )
    redis_server.pause()  # hung at the commit: the push gives up, the entry stays
    try:
        with transaction.atomic():
            assert enqueue_flow(tree, on_commit=True) is None
    finally:
        redis_server.unpause()
    (entry,) = OutboxEntry.objects.all()
    root_id = entry.jobs[0]["job_id"]
    leaf_keys = {f"{prefix}:ob-leaves:{job['job_id']}" for job in entry.jobs[1:]}
    assert r.exists(f"{prefix}:ob-top:{root_id}") == 0

    assert outbox.Relay().drain() == 1
    assert r.smembers(f"{prefix}:ob-top:{root_id}:dependencies") == leaf_keys
    worker = node.worker(
        {
            "queues": ["ob-leaves", "ob-top"],
            "doneAfter": 3,
            "behaviours": {
                "fetch": {"action": "return", "value": "fetched"},
                "report": {"action": "children"},
            },
        }
    )
    result = worker.expect("completed", id=root_id, timeout=30)["returnvalue"]
    assert result == {"values": dict.fromkeys(leaf_keys, "fetched"), "ignored": {}}
    assert node.producer.getJobState(queue="ob-top", id=root_id) == "completed"
