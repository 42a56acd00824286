"""Suite-wide fixtures: a private redis-server per test process, a key prefix per test.

No Django import here: the engine tests run without Django. Django fixtures live in
the conftest of the Django test directories.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from flowjobs.engine import FlowProducer, Queue, Worker
from tests.faultproxy import FaultProxy
from tests.helpers import HAS_DJANGO_TASKS, delete_prefixed_keys, new_prefix
from tests.redis_server import RedisServer

TESTS_DIR = Path(__file__).resolve().parent

# With `--dist loadgroup`, tests of these kinds all go to one xdist worker: Chromium
# sessions and process-killing tests are heavy on a 2-core machine and timing-sensitive,
# so they run one at a time while the other worker gets on with the rest.
SERIAL_KINDS = ("chaos", "browser")

collect_ignore = [] if HAS_DJANGO_TASKS else ["tasks", "taskapp"]


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # tryfirst: xdist reads the xdist_group marks in its own (later) implementation.
    for item in items:
        path = Path(str(item.path)).resolve()
        for kind in SERIAL_KINDS:
            if item.get_closest_marker(kind) or TESTS_DIR / kind in path.parents:
                item.add_marker(pytest.mark.xdist_group(kind))
                break


@pytest.fixture(autouse=True)
def outbox_reaper_idle() -> Iterator[None]:
    """The outbox reaper (a thread of the test process) deletes pushed outbox rows after
    a test's commits. Waiting for it at each test's end keeps its work out of the next
    test, which saw it on CI: a row in the first batch it counted, and on SQLite a relay
    write refused with "database is locked" while the reaper's delete held the lock."""
    yield
    outbox = sys.modules.get("flowjobs.outbox")  # (imported by Django tests only)
    if outbox is not None:
        assert outbox._reaper.wait_idle(10), "the outbox reaper is still busy after 10 s"


@pytest.fixture
def missing_role_threads() -> Iterator[dict[int, Any]]:
    """The threads `current_user_under_a_missing_role` gave a role that PostgreSQL cannot
    assume (see tests.helpers.RoleChanges); their connections get their settings back
    at the test's end. The signal thread and asgiref's thread outlive the test: a later
    test's receiver in the signal thread failed with the missing role (seen on a
    PostgreSQL run)."""
    from tests.helpers import restore_roles

    threads: dict[int, Any] = {}
    try:
        yield threads
    finally:
        restore_roles(threads)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One private redis-server per test process (so one per xdist worker)."""
    server = RedisServer()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def proxy(redis_server: RedisServer) -> Iterator[FaultProxy]:
    """A TCP proxy in front of the test process's redis-server that injects network
    faults (tests/faultproxy.py)."""
    redis_server.ensure_running()
    proxy = FaultProxy("127.0.0.1", redis_server.port)
    yield proxy
    proxy.close()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    # A previous test may have paused or stopped the shared server; later tests get it back.
    redis_server.ensure_running()
    return redis_server.url


@pytest.fixture
def prefix(redis_server: RedisServer) -> Iterator[str]:
    """A key prefix of this test's own; its keys are deleted when the test ends.

    Fixtures that use the prefix (queues, workers) are torn down before this one,
    so nothing writes under the prefix while it is cleaned.
    """
    value = new_prefix()
    yield value
    redis_server.ensure_running()
    with redis_server.client(socket_timeout=10) as client:
        delete_prefixed_keys(client, value)


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    """A raw redis-py client on the test's server, replies decoded to str."""
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        yield client
    finally:
        client.close()


# --- engine objects bound to the test's private Redis and prefix, closed afterwards ----------


@pytest.fixture
def make_queue(redis_url: str, prefix: str) -> Iterator[Callable[..., Queue]]:
    queues: list[Queue] = []

    def make(name: str = "q", **kwargs: Any) -> Queue:
        queue = Queue(name, connection=redis_url, prefix=prefix, **kwargs)
        queues.append(queue)
        return queue

    yield make
    for queue in queues:
        queue.close()


@pytest.fixture
def queue(make_queue: Callable[..., Queue]) -> Queue:
    return make_queue("q")


@pytest.fixture
def make_worker(redis_url: str, prefix: str) -> Iterator[Callable[..., Worker]]:
    workers: list[Worker] = []

    def make(queue_name: str, processor: Any, **kwargs: Any) -> Worker:
        kwargs.setdefault("drain_delay", 0.5)
        worker = Worker(queue_name, processor, connection=redis_url, prefix=prefix, **kwargs)
        workers.append(worker)
        return worker

    yield make
    for worker in workers:
        worker.close(force=True, timeout=5)


@pytest.fixture
def flow_producer(redis_url: str, prefix: str) -> Iterator[FlowProducer]:
    producer = FlowProducer(connection=redis_url, prefix=prefix)
    yield producer
    producer.close()


@pytest.fixture(scope="session")
def wheel_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The python of a venv OUTSIDE the repository with the built flowjobs wheel (and
    pytest, pytest-django) installed: run it from a directory outside the repository and
    `import flowjobs` is the installed package, never the source tree."""
    from tests.packaging.wheel import build_wheel, install_wheel

    base = tmp_path_factory.mktemp("wheel")
    return install_wheel(base / "venv", build_wheel(base / "dist"))
