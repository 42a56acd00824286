"""Redis Sentinel: a primary, a replica and three Sentinels on loopback; the primary
crashes mid-workload, the Sentinels fail over to the replica, and the workload
finishes on the new primary.

A forced `SENTINEL FAILOVER` with the old primary still alive is not tested here:
Sentinel converts the old primary only seconds later, and until then clients that
stay connected to it (redis-py re-resolves the primary only on reconnect) read and
write there; see docs/deployment.md."""

from __future__ import annotations

import logging
import time
import uuid

import pytest
import redis

from flowjobs.engine import Flow, FlowProducer, Queue, QueueEvents, Worker
from flowjobs.engine.connection import describe
from tests.helpers import wait_for, work_for
from tests.scale.support import elapsed_since, sentinel_setup

pytestmark = pytest.mark.chaos

JOBS = 200
FLOWS = 20
CHILDREN = 4
WORK_SECONDS = 0.03


def sentinel_url(sentinels) -> str:
    hosts = ",".join(f"127.0.0.1:{s.port}" for s in sentinels)
    return f"redis+sentinel://{hosts}/mymaster/0"


def test_failover_mid_workload_finishes_the_workload(caplog, record_property) -> None:
    caplog.set_level(logging.WARNING, logger="flowjobs")
    prefix = "sent" + uuid.uuid4().hex[:8]
    with sentinel_setup() as (primary, replica, sentinels):
        url = sentinel_url(sentinels)
        assert describe(url) == url
        queue = Queue("work", connection=url, prefix=prefix)
        producer = FlowProducer(connection=url, prefix=prefix)
        completed: set[str] = set()
        events = QueueEvents("work", connection=url, prefix=prefix)
        events.on("completed", lambda event: completed.add(event["jobId"]))
        ids = {queue.add("job", {"n": n}).id for n in range(JOBS)}
        for n in range(FLOWS):
            tree = producer.add(
                Flow(
                    "parent",
                    "work",
                    {"flow": n},
                    children=[Flow("child", "work", {"n": i}) for i in range(CHILDREN)],
                )
            )
            ids |= {node.job.id for node in tree.walk()}
        # the jobs are on the replica before the failover (replication is asynchronous)
        assert queue.client.wait(1, 5000) == 1

        def process(job):
            work_for(WORK_SECONDS)  # the job's work: the failover catches jobs in flight
            if job.name == "parent":
                return len(job.get_children_values())
            return job.data["n"]

        worker = Worker(
            "work",
            process,
            connection=url,
            prefix=prefix,
            concurrency=4,
            lock_duration=2000,
            stalled_interval=1000,
            max_stalled_count=100,
            drain_delay=0.5,
        )
        try:
            wait_for(lambda: len(completed) >= JOBS // 4, timeout=30, message="no progress")
            with sentinels[0].client() as client:
                old = client.sentinel_get_master_addr_by_name("mymaster")
                assert old == ("127.0.0.1", primary.port)
                started = time.monotonic()
                done_before = len(completed & ids)
                primary.kill()  # a crash: the Sentinels agree it is down and elect the replica

                def switched() -> bool:
                    return client.sentinel_get_master_addr_by_name("mymaster") == (
                        "127.0.0.1",
                        replica.port,
                    )

                wait_for(switched, timeout=30, message="the failover did not happen")
            failover_seconds = elapsed_since(started)

            def all_completed() -> bool:
                try:
                    pipe = queue.client.pipeline(transaction=False)
                    for job_id in ids:
                        pipe.zscore(queue.keys.key("completed"), job_id)
                    return all(score is not None for score in pipe.execute())
                except redis.ConnectionError:
                    return False  # the Sentinels may not all agree on the new primary yet

            wait_for(
                all_completed,
                timeout=60,
                interval=0.2,
                message=f"not finished after the failover ({len(completed)} seen completed)",
            )
        finally:
            worker.close(timeout=10)
            events.close()
        # everything is on the new primary
        with replica.client(decode_responses=True) as client:
            assert client.info("replication")["role"] == "master"
        counts = queue.get_job_counts()
        assert counts["failed"] == 0 and counts["active"] == 0
        assert counts["completed"] == len(ids)
        parents = [job for job in queue.get_jobs("completed") if job.name == "parent"]
        assert len(parents) == FLOWS
        assert all(p.returnvalue == CHILDREN for p in parents), [
            (p.id, p.returnvalue, p.attempts_started, p.stalled_counter, p.get_dependencies_count())
            for p in parents
            if p.returnvalue != CHILDREN
        ]
        assert done_before < len(ids), "the failover came after the workload"
        logs = " ".join(r.getMessage() for r in caplog.records)
        assert "lost Redis" in logs or "could not record" in logs or "failed" in logs
        record_property("jobs", len(ids))
        record_property("failover_seconds", failover_seconds)
        record_property("completed_before_failover", done_before)
        queue.close()
        producer.close()
