"""Losing Redis is one warning for the mirror, getting it back one info line (issue 14)."""

from __future__ import annotations

import logging
import threading
import time

import pytest

from flowjobs import mirror
from flowjobs.engine import Queue
from flowjobs.models import JobRecord
from tests.helpers import wait_for
from tests.redis_server import RedisServer


def _records(caplog, level: int, text: str) -> list[logging.LogRecord]:
    return [
        r
        for r in caplog.records
        if r.name == "flowjobs.mirror" and r.levelno == level and text in r.getMessage()
    ]


@pytest.mark.chaos
@pytest.mark.django_db(transaction=True)
def test_a_redis_outage_is_one_warning_and_one_info_line(settings, prefix, caplog):
    with RedisServer() as server:
        settings.FLOWJOBS = {**settings.FLOWJOBS, "REDIS_URL": server.url, "PREFIX": prefix}
        config = mirror.MirrorSettings(
            **{
                **mirror.mirror_settings().__dict__,
                "lock_ttl_ms": 900,
                "block_ms": 100,
                "discover_interval": 0.2,
            }
        )
        states: list[str] = []
        stop = threading.Event()
        thread = threading.Thread(
            target=mirror.run_mirror,
            args=(stop,),
            kwargs={"config": config, "on_state": states.append},
            daemon=True,
        )
        caplog.set_level(logging.INFO, logger="flowjobs.mirror")
        thread.start()
        try:
            wait_for(lambda: "projecting" in states, message="projecting")
            server.kill()
            wait_for(lambda: _records(caplog, logging.WARNING, "lost its Redis connection"))
            # Several retry rounds (one every 0.3 s) while Redis is away.
            down_since = time.monotonic()
            wait_for(lambda: time.monotonic() - down_since >= 2.0, timeout=5)
            states.clear()
            server.start()
            wait_for(lambda: "projecting" in states, timeout=15, message="projecting again")
            job = Queue("q", connection=server.url, prefix=prefix).add("after", {})
            wait_for(
                lambda: JobRecord.objects.filter(job_id=job.id).exists(),
                message="mirrored after the outage",
            )
        finally:
            stop.set()
            thread.join(10)

    assert len(_records(caplog, logging.WARNING, "lost its Redis connection")) == 1
    back = _records(caplog, logging.INFO, "reconnected to Redis after")
    assert len(back) == 1
    assert float(back[0].getMessage().rsplit("after ", 1)[1].split()[0]) >= 2.0
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []
    assert all(r.exc_info is None for r in caplog.records if r.name == "flowjobs.mirror")


def test_the_projector_client_is_built_by_the_engine_builder(redis_url):
    from flowjobs.engine.connection import sync_client

    engine_options = sync_client(redis_url).connection_pool.connection_kwargs
    options = mirror.redis_client(redis_url).connection_pool.connection_kwargs
    # The engine's dead-connection settings (timeouts, keepalive, health checks), plus
    # lenient decoding of foreign bytes.
    for name in ("health_check_interval", "socket_timeout", "socket_keepalive"):
        assert options.get(name) == engine_options.get(name), name
    assert options["encoding_errors"] == "replace"
