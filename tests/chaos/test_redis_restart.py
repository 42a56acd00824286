"""Redis (AOF, fsync always) stopped or crashed and restarted mid-workload: workers,
producers and event listeners reconnect; every add that returned is processed."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from pathlib import Path

import pytest
import redis

from flowjobs.engine import ConnectionFailed, Flow, FlowJobsError, FlowProducer, Queue, QueueEvents
from flowjobs.engine.worker import DIRECT_LANES_UP_TO
from tests.chaos.support import WorkerProcess, duplicates, hold, read_executions
from tests.helpers import wait_for
from tests.redis_server import RedisServer

pytestmark = pytest.mark.chaos

OUTAGE_SECONDS = 3.0  # longer than the lock duration: locks expire while Redis is away
WORKER_OPTIONS = {
    "concurrency": 4,
    "lock_duration": 2000,
    "stalled_interval": 1000,
    "max_stalled_count": 1000,
    "work_ms": 10,
}


class Producer(threading.Thread):
    """Adds jobs (and every tenth time a small flow) until stopped; keeps what each
    call answered. A refused call backs off a little, as an application would."""

    def __init__(self, url: str, prefix: str) -> None:
        super().__init__(daemon=True)
        self.queue = Queue("jobs", connection=url, prefix=prefix)
        self.flows = FlowProducer(connection=url, prefix=prefix)
        self.accepted: list[str] = []
        self.refused: list[tuple[str, BaseException]] = []
        self.unexpected: list[BaseException] = []
        self.halt = threading.Event()

    def run(self) -> None:
        n = 0
        while not self.halt.is_set():
            n += 1
            job_id = f"j{n}"
            try:
                if n % 10 == 0:
                    tree = self.flows.add(
                        Flow(
                            "parent",
                            "jobs",
                            {"n": n},
                            job_id=job_id,
                            children=[
                                Flow("child", "jobs", {"n": n}, job_id=f"{job_id}c{i}")
                                for i in range(3)
                            ],
                        )
                    )
                    self.accepted += [node.job.id for node in tree.walk()]
                else:
                    self.accepted.append(self.queue.add("job", {"n": n}, job_id=job_id).id)
            except ConnectionFailed as error:
                self.refused.append((job_id, error))
                self.halt.wait(0.05)
            except BaseException as error:  # noqa: BLE001 - recorded and asserted on
                self.unexpected.append(error)
                return
            self.halt.wait(0.002)

    def stop(self) -> None:
        self.halt.set()
        self.join(30)
        self.queue.close()
        self.flows.close()


# up to DIRECT_LANES_UP_TO each slot's own thread records its job and takes the next
# (direct lanes); above, the event loop records the jobs of the worker's threads
@pytest.mark.parametrize(
    ("outage", "concurrency"),
    [
        ("shutdown", DIRECT_LANES_UP_TO + 2),
        ("sigkill", DIRECT_LANES_UP_TO + 2),
        ("sigkill", 2),
    ],
)
def test_workload_survives_a_redis_restart(
    outage: str, concurrency: int, tmp_path: Path, caplog, report
) -> None:
    caplog.set_level(logging.WARNING, logger="flowjobs")
    prefix = "chaos" + uuid.uuid4().hex[:8]
    record_dir = tmp_path / "records"
    record_dir.mkdir()
    with RedisServer(["--appendonly", "yes", "--appendfsync", "always"]) as server:
        queue = Queue("jobs", connection=server.url, prefix=prefix)
        completed_events: list[str] = []
        events = QueueEvents("jobs", connection=server.url, prefix=prefix)
        events.on("completed", lambda event: completed_events.append(event["jobId"]))
        workers = [
            WorkerProcess(
                server.url,
                prefix,
                ["jobs"],
                record_dir,
                tmp_path,
                **{**WORKER_OPTIONS, "concurrency": concurrency},
            )
            for _ in range(2)
        ]
        producer = Producer(server.url, prefix)
        producer.start()
        try:
            wait_for(
                lambda: queue.get_job_counts("completed")["completed"] >= 100,
                timeout=30,
                message="the workload never got going",
            )
            wait_for(
                lambda: queue.get_job_counts("active")["active"] > 0,
                message="no job in flight to be caught by the outage",
            )

            down = time.monotonic()
            if outage == "shutdown":
                server.stop()
            else:
                server.kill()
            with pytest.raises(ConnectionFailed) as refused:
                queue.add("during-outage", {"x": 1}, job_id="outage-probe")
            assert isinstance(refused.value, redis.ConnectionError)
            assert isinstance(refused.value, FlowJobsError)
            message = str(refused.value)
            assert f"127.0.0.1:{server.port}" in message and "did not answer" in message
            assert 'job "during-outage"' in message and f"{prefix}:jobs" in message
            hold(OUTAGE_SECONDS)
            server.start()
            outage_seconds = time.monotonic() - down
            accepted_before = len(producer.accepted)

            wait_for(
                lambda: len(producer.accepted) >= accepted_before + 100,
                timeout=30,
                message="the producer did not get going again after the restart",
            )
        finally:
            producer.stop()
        try:
            assert not producer.unexpected, producer.unexpected
            assert producer.refused, "the producer never noticed the outage"
            accepted = set(producer.accepted)

            def all_completed() -> bool:
                pipe = queue.client.pipeline(transaction=False)
                for job_id in accepted:
                    pipe.zscore(queue.keys.key("completed"), job_id)
                return all(score is not None for score in pipe.execute())

            wait_for(
                all_completed,
                timeout=60,
                interval=0.2,
                message=f"accepted jobs not all completed: {queue.get_job_counts()}",
            )
            counts = queue.get_job_counts()
            assert counts["failed"] == 0
            stalled = sum(job.stalled_counter for job in queue.get_jobs_by_id(sorted(accepted)))
            # a refused add either never happened or, when the reply was lost, ran fully
            for job_id, _ in producer.refused:
                state = queue.get_job_state(job_id)
                assert state in ("unknown", "completed", "active", "waiting", "waiting-children")
            assert queue.get_job("outage-probe") is None
            wait_for(
                lambda: accepted & set(completed_events) - set(producer.accepted[:accepted_before]),
                message="QueueEvents saw no completion after the restart",
            )
        finally:
            for worker in workers:
                worker.stop()
            events.close()
            queue.close()
        logs = "".join(worker.log() for worker in workers)
        assert "lost Redis at" in logs or "cannot reach Redis at" in logs, logs[-3000:]
        assert "is back after" in logs, logs[-3000:]
        assert any(
            r.name == "flowjobs.events" and "lost Redis at" in r.getMessage()
            for r in caplog.records
        ), "QueueEvents did not report the outage"
        report("jobs", len(accepted))
        report("stalled_recoveries", stalled)
        report("refused_adds", len(producer.refused))
        report("duplicates", duplicates(read_executions(record_dir)))
        report("outage_seconds", round(outage_seconds, 1))
