"""runworker and checkstalled against what issue 14 found: foreign jobs a worker cannot
decode (they fail with a reason, the good ones beside them complete, no process dies),
a half-open cut between the workers and Redis (they consume again soon after), and an
outage logged once, not once per failed check."""

from __future__ import annotations

import signal
import threading
import time

import pytest
import redis

from flowjobs import conf
from tests.faultproxy import FaultProxy
from tests.helpers import wait_for

pytestmark = pytest.mark.django_db(transaction=True)

DEEP = 20_000
POISON = {
    b"bad-utf8": {b"name": b"hello", b"data": b'{"a": "\xff"}', b"opts": b"{}", b"timestamp": b"1"},
    b"deep-opts": {
        b"name": b"hello",
        b"data": b"{}",
        b"opts": b'{"a":' * DEEP + b"1" + b"}" * DEEP,
        b"timestamp": b"1",
    },
}


def test_poison_jobs_fail_and_no_worker_process_dies(start_worker, redis_url, prefix):
    raw = redis.Redis.from_url(redis_url)
    base = f"{prefix}:fj-echo:".encode()
    try:
        for job_id, fields in POISON.items():
            raw.hset(base + job_id, mapping=fields)
        raw.lpush(base + b"wait", *POISON)
        raw.zadd(base + b"marker", {"0": 0})
    finally:
        raw.close()
    queue = conf.get_queue("fj-echo")
    good = [queue.add("hello", {"n": n}) for n in range(6)]
    worker = start_worker("fj-echo", "--processes", "2")
    wait_for(
        lambda: (
            all(queue.get_job_state(job.id) == "completed" for job in good)
            and all(queue.get_job_state(job_id.decode()) == "failed" for job_id in POISON)
        ),
        timeout=30,
        message=worker.output,
    )
    assert queue.get_job("bad-utf8").failed_reason.endswith(
        'field "data" is not valid UTF-8 (byte 0xff at offset 7)'
    )
    assert 'field "opts" is not valid JSON' in queue.get_job("deep-opts").failed_reason
    worker.signal(signal.SIGTERM)
    assert worker.wait() == 0, worker.output()
    assert worker.output().count("started worker process") == 2, worker.output()


@pytest.mark.chaos
def test_worker_processes_consume_again_after_a_half_open_cut(start_worker, redis_server):
    proxy = FaultProxy("127.0.0.1", redis_server.port)
    try:
        queue = conf.get_queue("fj-echo")
        worker = start_worker("fj-echo", "--processes", "2", env={"FLOWJOBS_REDIS_URL": proxy.url})
        wait_for(lambda: len(queue.get_workers()) >= 2, timeout=30, message=worker.output)
        warm = queue.add("hello", {"n": -1})
        wait_for(lambda: queue.get_job_state(warm.id) == "completed", timeout=20)
        proxy.hold()
        threading.Event().wait(3.0)  # the outage
        jobs = [queue.add("hello", {"n": n}) for n in range(50)]
        proxy.restore()
        restored = time.monotonic()
        wait_for(
            lambda: all(queue.get_job_state(job.id) == "completed" for job in jobs),
            timeout=25,
            message=worker.output,
        )
        assert time.monotonic() - restored < 15
        worker.signal(signal.SIGTERM)
        assert worker.wait() == 0, worker.output()
        assert worker.output().count("started worker process") == 2, worker.output()
    finally:
        proxy.close()


@pytest.mark.chaos
def test_checkstalled_logs_an_outage_once_and_its_end_once(worker_env, redis_server):
    import subprocess
    import sys
    import tempfile
    from pathlib import Path

    proxy = FaultProxy("127.0.0.1", redis_server.port)
    log = tempfile.NamedTemporaryFile(mode="w+", suffix=".log", delete=False)  # noqa: SIM115
    repo = Path(__file__).resolve().parents[2]
    process = subprocess.Popen(
        [sys.executable, str(repo / "manage.py"), "checkstalled", "fj-echo", "--interval", "100"],
        cwd=repo,
        env={**worker_env, "FLOWJOBS_REDIS_URL": proxy.url},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        output = lambda: Path(log.name).read_text()  # noqa: E731
        wait_for(lambda: proxy.connections >= 1, timeout=20, message=output)
        proxy.refuse()
        proxy.reset()
        threading.Event().wait(2.0)  # the outage: about 20 checks fail
        proxy.restore()
        wait_for(lambda: "is back after" in output(), timeout=15, message=output)
        process.send_signal(signal.SIGTERM)
        assert process.wait(20) == 0, output()
        assert output().count("lost Redis at") == 1, output()
        assert output().count("is back after") == 1, output()
    finally:
        if process.poll() is None:
            process.kill()
        proxy.close()
        Path(log.name).unlink()


@pytest.mark.chaos
def test_a_worker_still_connecting_is_not_taken_for_dead(redis_server, prefix):
    """runworker took a worker for dead once its start gave up waiting (10 s) for the
    first connection: a half-open cut while a worker process started made runworker stop
    with an error (CI saw it). Such a worker keeps trying; only one whose run ended is
    stopped."""
    from flowjobs.engine import Worker
    from flowjobs.runner import stopped_workers

    proxy = FaultProxy("127.0.0.1", redis_server.port)
    proxy.hold()
    worker = Worker("fj-echo", lambda job: None, connection=proxy.url, prefix=prefix)
    try:
        worker.start()  # gives up waiting for the connection after 10 s
        assert not worker.is_running()
        assert stopped_workers([worker]) == []
        proxy.restore()
        wait_for(worker.is_running, timeout=40)
        worker.close(timeout=10)
        assert stopped_workers([worker]) == [worker]
    finally:
        worker.close(force=True, timeout=5)
        proxy.close()
