"""A Redis that may evict keys loses jobs silently: the worker says so when it starts."""

from __future__ import annotations

import logging
import threading
import uuid

import pytest

from flowjobs.engine import Queue, Worker
from tests.redis_server import RedisServer


def run_one_job(url: str) -> object:
    prefix = "evict" + uuid.uuid4().hex[:8]
    done = threading.Event()
    queue = Queue("q", connection=url, prefix=prefix)
    worker = Worker("q", lambda job: job.data["n"] * 2, connection=url, prefix=prefix)
    worker.on("completed", lambda job, result: done.set())
    try:
        job = queue.add("double", {"n": 21})
        assert done.wait(10), "the worker did not process the job"
        return queue.get_job(job.id).returnvalue
    finally:
        worker.close(timeout=5)
        queue.close()


@pytest.mark.parametrize("policy", ["allkeys-lru", "volatile-ttl"])
def test_worker_warns_about_an_evicting_policy(policy: str, caplog) -> None:
    caplog.set_level(logging.INFO, logger="flowjobs")
    with RedisServer(["--maxmemory-policy", policy]) as server:
        assert run_one_job(server.url) == 42
    warnings = [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING and "maxmemory-policy" in r.getMessage()
    ]
    assert len(warnings) == 1, warnings
    assert f'maxmemory-policy "{policy}"' in warnings[0]
    assert "set maxmemory-policy noeviction" in warnings[0]
    assert f"127.0.0.1:{server.port}" in warnings[0]


def test_no_warning_with_noeviction(caplog) -> None:
    caplog.set_level(logging.INFO, logger="flowjobs")
    with RedisServer(["--maxmemory-policy", "noeviction"]) as server:
        assert run_one_job(server.url) == 42
    assert not [r for r in caplog.records if "maxmemory-policy" in r.getMessage()]


def test_config_command_disabled_is_tolerated(caplog) -> None:
    """Managed services rename CONFIG away; the worker runs and says it could not check."""
    caplog.set_level(logging.INFO, logger="flowjobs")
    with RedisServer(["--rename-command", "CONFIG", ""]) as server:
        assert run_one_job(server.url) == 42
    notes = [r for r in caplog.records if "maxmemory-policy" in r.getMessage()]
    assert len(notes) == 1 and notes[0].levelno == logging.INFO
    assert "cannot read maxmemory-policy" in notes[0].getMessage()
    assert "it must be noeviction" in notes[0].getMessage()
