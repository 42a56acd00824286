"""Redis Cluster: three primaries on loopback. With a hash-tagged prefix ("{...}") every
key of every queue lands in one slot, so scripts and flows across queues work; a
prefix without a tag is refused with an explanation."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import redis
import redis.cluster

from flowjobs.engine import (
    Flow,
    FlowProducer,
    InvalidQueueName,
    Queue,
    QueueEvents,
    Worker,
)
from flowjobs.engine.connection import describe
from tests.helpers import wait_for
from tests.redis_server import RedisServer
from tests.scale.support import redis_cluster

FLOWS = 10
CHILDREN = 4


@pytest.fixture(scope="module")
def cluster() -> Iterator[list[RedisServer]]:
    with redis_cluster(3) as nodes:
        yield nodes


def cluster_url(nodes: list[RedisServer]) -> str:
    return "redis+cluster://" + ",".join(f"127.0.0.1:{node.port}" for node in nodes[:2])


def run_flows(connection, prefix: str) -> None:
    """FLOWS parents in "reports", each with children in "fetch" and "render"; a worker
    per queue; QueueEvents sees every parent complete after its children."""
    producer = FlowProducer(connection=connection, prefix=prefix)
    reports = Queue("reports", connection=connection, prefix=prefix)
    parents_done: set[str] = set()
    events = QueueEvents("reports", connection=connection, prefix=prefix)
    events.on("completed", lambda event: parents_done.add(event["jobId"]))
    workers = [
        Worker(
            name,
            (lambda job: sum(job.get_children_values().values()))
            if name == "reports"
            else (lambda job: job.data["n"]),
            connection=connection,
            prefix=prefix,
            concurrency=4,
            drain_delay=0.5,
        )
        for name in ("reports", "fetch", "render")
    ]
    try:
        trees = [
            producer.add(
                Flow(
                    "report",
                    "reports",
                    {"flow": f},
                    children=[
                        Flow("part", "fetch" if n % 2 else "render", {"n": n})
                        for n in range(CHILDREN)
                    ],
                )
            )
            for f in range(FLOWS)
        ]
        ids = {tree.job.id for tree in trees}
        wait_for(lambda: ids <= parents_done, timeout=30, message=f"done: {len(parents_done)}")
        for tree in trees:
            parent = reports.get_job(tree.job.id)
            assert parent.returnvalue == sum(range(CHILDREN))
            for child in tree.children:
                finished = child.job.queue.get_job(child.job.id)
                assert finished.finished_on and parent.processed_on >= finished.finished_on - 50
        read = producer.get_flow("reports", trees[0].job.id)
        assert len(read.children) == CHILDREN
        assert reports.get_job_counts("completed")["completed"] == FLOWS
    finally:
        for worker in workers:
            worker.close(timeout=10)
        events.close()
        reports.close()
        producer.close()


def test_flows_across_queues_on_a_cluster_url(cluster) -> None:
    url = cluster_url(cluster)
    assert describe(url) == url
    prefix = "{fj" + uuid.uuid4().hex[:6] + "}"
    run_flows(url, prefix)
    # the keys really are spread over one slot of one node only
    with redis.cluster.RedisCluster(host="127.0.0.1", port=cluster[0].port) as client:
        slot = client.keyslot(f"{prefix}:reports:meta")
        assert client.keyslot(f"{prefix}:fetch:meta") == slot


def test_flows_on_a_cluster_client_object(cluster) -> None:
    client = redis.cluster.RedisCluster(
        host="127.0.0.1", port=cluster[1].port, decode_responses=True
    )
    try:
        run_flows(client, "{fj" + uuid.uuid4().hex[:6] + "}")
    finally:
        client.close()


@pytest.mark.parametrize("prefix", ["bull", "{}bull", "bull{", "b}u{"])
def test_prefix_without_hash_tag_is_refused(cluster, prefix: str) -> None:
    url = cluster_url(cluster)
    for make in (
        lambda: Queue("q", connection=url, prefix=prefix),
        lambda: FlowProducer(connection=url, prefix=prefix),
        lambda: Worker("q", lambda job: None, connection=url, prefix=prefix),
        lambda: QueueEvents("q", connection=url, prefix=prefix, autorun=False),
    ):
        with pytest.raises(InvalidQueueName) as refused:
            make()
        message = str(refused.value)
        assert "on Redis Cluster the prefix must contain a hash tag" in message
        assert '"{bull}"' in message and f'"{prefix}"' in message


def test_hash_tag_is_not_needed_off_cluster(redis_url: str) -> None:
    queue = Queue("q", connection=redis_url, prefix="plain" + uuid.uuid4().hex[:6])
    try:
        assert queue.add("x", {}).id
    finally:
        queue.obliterate(force=True)
        queue.close()


def test_queue_management_on_a_cluster(cluster) -> None:
    """The non-script calls (pipelines of reads, SCAN in obliterate) work on Cluster."""
    url = cluster_url(cluster)
    prefix = "{fj" + uuid.uuid4().hex[:6] + "}"
    queue = Queue("manage", connection=url, prefix=prefix)
    failures = []
    worker = Worker(
        "manage",
        lambda job: (_ for _ in ()).throw(RuntimeError(f"boom {job.id}")),
        connection=url,
        prefix=prefix,
        drain_delay=0.5,
    )
    worker.on("failed", lambda job, error: failures.append(job.id))
    try:
        queue.pause()
        assert queue.is_paused()
        jobs = queue.add_bulk([{"name": "n", "data": {"n": n}} for n in range(5)])
        delayed = queue.add("later", {}, delay=60_000)
        assert queue.get_job_counts("waiting", "delayed") == {"waiting": 5, "delayed": 1}
        queue.resume()
        wait_for(lambda: len(failures) == 5, message=f"failed: {failures}")
        assert queue.get_job(jobs[0].id).failed_reason == f"boom {jobs[0].id}"
        delayed.promote()
        wait_for(lambda: queue.get_job_counts("failed")["failed"] == 6)
        assert len(queue.clean(0, 0, "failed")) == 6
    finally:
        worker.close(timeout=10)
    queue.obliterate(force=True)
    with redis.cluster.RedisCluster(host="127.0.0.1", port=cluster[0].port) as client:
        assert not list(client.scan_iter(match=f"{prefix}:*"))
    queue.close()
