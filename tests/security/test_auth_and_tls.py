"""Password, ACL user and TLS connections, end to end: add a job and a flow, a worker
processes them, QueueEvents sees the completions. Wrong credentials and untrusted
certificates fail with clear errors that never show the password."""

from __future__ import annotations

import logging
import subprocess
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from flowjobs.engine import ConnectionFailed, Flow, FlowProducer, Queue, QueueEvents, Worker
from tests.helpers import until_cancelled, wait_for
from tests.redis_server import RedisServer

ADMIN_PASSWORD = "admin-" + uuid.uuid4().hex
APP_PASSWORD = "app-" + uuid.uuid4().hex


def round_trip(connection: Any, prefix: str) -> None:
    """A job and a two-child flow through a worker, seen completed by QueueEvents."""
    queue = Queue("secure", connection=connection, prefix=prefix)
    producer = FlowProducer(connection=connection, prefix=prefix)
    completed: list[str] = []
    events = QueueEvents("secure", connection=connection, prefix=prefix)
    events.on("completed", lambda event: completed.append(event["jobId"]))
    worker = Worker(
        "secure",
        lambda job: {"echo": job.data, "kids": len(job.get_children_values())},
        connection=connection,
        prefix=prefix,
        drain_delay=0.5,
    )
    try:
        job = queue.add("echo", {"n": 1})
        tree = producer.add(
            Flow(
                "parent",
                "secure",
                {"n": 2},
                children=[Flow("kid", "secure", {"n": i}) for i in (3, 4)],
            )
        )
        ids = {job.id, *(node.job.id for node in tree.walk())}
        wait_for(lambda: ids <= set(completed), message=f"completions seen: {completed}")
        assert queue.get_job(job.id).returnvalue == {"echo": {"n": 1}, "kids": 0}
        assert queue.get_job(tree.job.id).returnvalue == {"echo": {"n": 2}, "kids": 2}
    finally:
        worker.close(timeout=10)
        events.close()
        producer.close()
        queue.close()


def cancel_a_running_job(connection: Any, prefix: str, **worker_options: Any) -> None:
    queue = Queue("slow", connection=connection, prefix=prefix)
    started = threading.Event()

    async def slow(job):
        started.set()
        await until_cancelled(30)

    worker = Worker("slow", slow, connection=connection, prefix=prefix, **worker_options)
    try:
        job = queue.add("slow", {})
        assert started.wait(10)
        assert queue.cancel_job(job.id)
        wait_for(lambda: queue.get_job_state(job.id) == "failed", message="not cancelled")
    finally:
        worker.close(force=True, timeout=5)
        queue.close()


@pytest.fixture(scope="module")
def password_server() -> Iterator[RedisServer]:
    with RedisServer(password=ADMIN_PASSWORD) as server:
        yield server


def test_password_url_works_end_to_end(password_server: RedisServer) -> None:
    round_trip(password_server.url, "auth" + uuid.uuid4().hex[:6])


def acl_user_url(server: RedisServer, prefix: str, **rules: Any) -> str:
    """A new ACL user confined to `prefix`'s keys, without dangerous commands; its URL."""
    user = "app" + uuid.uuid4().hex[:6]
    with server.client(decode_responses=True) as admin:
        assert admin.acl_setuser(
            user,
            enabled=True,
            passwords=[f"+{APP_PASSWORD}"],
            keys=[f"{prefix}:*"],
            commands=["+@all", "-@dangerous"],
            **rules,
        )
    return f"redis://{user}:{APP_PASSWORD}@127.0.0.1:{server.port}/0"


def test_acl_user_with_least_privilege_works_end_to_end(password_server, caplog) -> None:
    """An ACL user limited to its prefix's keys and without dangerous commands (CONFIG,
    CLIENT LIST, KEYS, FLUSHALL...) is enough for producers, workers and events."""
    caplog.set_level(logging.INFO, logger="flowjobs")
    prefix = "acl" + uuid.uuid4().hex[:6]
    # cancel requests are published on <prefix>:<queue>:cancel
    url = acl_user_url(password_server, prefix, channels=[f"{prefix}:*"])
    round_trip(url, prefix)
    cancel_a_running_job(url, prefix)
    # the user really is confined: other keys and admin commands are refused
    with redis.Redis.from_url(url) as client:
        with pytest.raises(redis.exceptions.NoPermissionError):
            client.set("elsewhere", 1)
        with pytest.raises(redis.exceptions.NoPermissionError):
            client.config_get("maxmemory-policy")
    # without CONFIG the worker cannot check the eviction policy, and says so
    assert any("cannot read maxmemory-policy" in r.getMessage() for r in caplog.records)
    # a queue outside the user's prefix is refused by Redis, not silently empty
    with pytest.raises(redis.exceptions.NoPermissionError):
        Queue("secure", connection=url, prefix="other").add("x", {})


def test_acl_user_without_channel_rights_still_cancels(password_server, caplog) -> None:
    """Without pub/sub rights the worker warns that cancel requests come through lock
    renewal, and they do; the producer's request is not refused."""
    caplog.set_level(logging.INFO, logger="flowjobs")
    prefix = "nochan" + uuid.uuid4().hex[:6]
    url = acl_user_url(password_server, prefix)  # no channels: Redis 7 grants none
    cancel_a_running_job(url, prefix, lock_duration=1000)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("cannot subscribe to cancel requests" in m for m in warnings), warnings


# the worker's thread ends with the AuthenticationError, as it should
@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_wrong_password_fails_clearly_and_never_shows_it(password_server, caplog) -> None:
    caplog.set_level(logging.INFO, logger="flowjobs")
    secret = "wrong-" + uuid.uuid4().hex
    url = f"redis://app:{secret}@127.0.0.1:{password_server.port}/0"
    queue = Queue("secure", connection=url, prefix="auth")
    with pytest.raises(ConnectionFailed) as refused:
        queue.add("x", {})
    message = str(refused.value)
    assert "refused the credentials" in message and secret not in message
    assert f"127.0.0.1:{password_server.port}" in message
    queue.close()

    worker = Worker("secure", lambda job: None, connection=url, prefix="auth")
    assert worker.wait_until_closed(10), "a worker with wrong credentials kept retrying"
    worker.close(timeout=5)  # joins the thread, so its exception is reported here
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert any("stopped" in m and "username-password" in m for m in errors), errors
    assert all(secret not in r.getMessage() for r in caplog.records)


@pytest.fixture(scope="module")
def tls_server() -> Iterator[RedisServer]:
    with RedisServer(tls=True, password=ADMIN_PASSWORD) as server:
        yield server


def test_redis_build_supports_tls(tls_server: RedisServer) -> None:
    """Debian's redis-server is built with TLS; a build without it would not even start
    the fixture's server (--tls-port is then an unknown option)."""
    version = subprocess.run(
        ["redis-server", "--version"], capture_output=True, text=True, check=True
    ).stdout
    assert tls_server.running, f"redis-server ({version.strip()}) did not start with TLS"
    with redis.Redis.from_url(
        f"rediss://:{ADMIN_PASSWORD}@127.0.0.1:{tls_server.port}/0"
        f"?ssl_ca_certs={tls_server.dir / 'ca.crt'}"
    ) as client:
        assert client.config_get("tls-port")["tls-port"] == str(tls_server.port)
        assert client.config_get("port")["port"] == "0"  # no plain-text port at all


def test_tls_url_works_end_to_end(tls_server: RedisServer) -> None:
    url = (
        f"rediss://:{ADMIN_PASSWORD}@127.0.0.1:{tls_server.port}/0"
        f"?ssl_cert_reqs=required&ssl_ca_certs={tls_server.dir / 'ca.crt'}"
    )
    round_trip(url, "tls" + uuid.uuid4().hex[:6])
    with tls_server.client(decode_responses=True) as client:
        assert client.connection_pool.connection_class.__name__ == "SSLConnection"


def test_tls_client_object_works_end_to_end(tls_server: RedisServer) -> None:
    """A ready-made redis.Redis with ssl arguments: the worker's asyncio clients are
    built from it and must speak TLS with the same CA too."""
    client = redis.Redis(
        host="127.0.0.1",
        port=tls_server.port,
        password=ADMIN_PASSWORD,
        ssl=True,
        ssl_cert_reqs="required",
        ssl_ca_certs=str(tls_server.dir / "ca.crt"),
        decode_responses=True,
    )
    try:
        round_trip(client, "tlsobj" + uuid.uuid4().hex[:6])
    finally:
        client.close()


def test_untrusted_certificate_is_refused(tls_server: RedisServer) -> None:
    url = f"rediss://:{ADMIN_PASSWORD}@127.0.0.1:{tls_server.port}/0?ssl_cert_reqs=required"
    queue = Queue("secure", connection=url, prefix="tls")
    try:
        with pytest.raises(ConnectionFailed) as refused:
            queue.add("x", {})
    finally:
        queue.close()
    assert "certificate verify failed" in str(refused.value)
    assert ADMIN_PASSWORD not in str(refused.value)


def test_plain_connection_to_a_tls_port_fails(tls_server: RedisServer) -> None:
    queue = Queue(
        "secure",
        connection=redis.Redis(
            host="127.0.0.1",
            port=tls_server.port,
            socket_timeout=0.5,
            retry=Retry(NoBackoff(), 0),
            decode_responses=True,
        ),
        prefix="tls",
    )
    try:
        with pytest.raises(ConnectionFailed):
            queue.add("x", {})
    finally:
        queue.client.close()
