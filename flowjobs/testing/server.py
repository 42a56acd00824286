"""The private redis-server of a test run: started on first use, killed at exit.

One server per test process (so one per pytest-xdist worker), on a free loopback port,
persistence off, in a temporary directory of its own. ``FLOWJOBS_TEST_REDIS_URL`` points
the kit at a Redis that already runs instead (a CI service container, say): each test
still gets a key prefix of its own, and only its own keys are deleted afterwards.
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import redis

from ..engine import FlowJobsError

__all__ = [
    "RedisServerMissing",
    "TestRedis",
    "delete_prefixed_keys",
    "pdeathsig_prefix",
    "stop_test_redis",
    "test_redis",
]

URL_VARIABLE = "FLOWJOBS_TEST_REDIS_URL"
BINARY_VARIABLE = "FLOWJOBS_REDIS_SERVER"
START_TIMEOUT_S = 10.0
INSTALL_HINT = (
    "install Redis (Debian/Ubuntu: `apt-get install redis-server`, macOS: `brew install "
    "redis`) so that `redis-server` is on PATH, or set FLOWJOBS_REDIS_SERVER to its path, "
    "or set FLOWJOBS_TEST_REDIS_URL to a Redis the tests may use"
)


class RedisServerMissing(FlowJobsError):
    """The test kit found no redis-server to start, or the one it started did not answer."""


def pdeathsig_prefix() -> list[str]:
    """``setpriv --pdeathsig KILL --``: the kernel kills the server when its parent dies, so
    a test run killed hard (SIGKILL, a CI timeout) leaves no redis-server behind.

    The signal fires when the *thread* that started the process ends, so it is only used
    from the main thread; elsewhere (and where setpriv is missing) atexit alone cleans up.
    """
    if threading.current_thread() is not threading.main_thread():
        return []
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "KILL", "--"] if setpriv else []


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def delete_prefixed_keys(client: redis.Redis, prefix: str) -> int:
    """Deletes every ``<prefix>:*`` key (in batches, without blocking Redis); returns how many."""
    deleted = 0
    batch: list[bytes | str] = []
    for key in client.scan_iter(match=f"{prefix}:*", count=1000):
        batch.append(key)
        if len(batch) >= 500:
            deleted += client.unlink(*batch)
            batch.clear()
    if batch:
        deleted += client.unlink(*batch)
    return deleted


class TestRedis:
    """A Redis for tests: a private redis-server, or the one FLOWJOBS_TEST_REDIS_URL names."""

    __test__ = False  # not a test class, whatever pytest's name rules think

    def __init__(self) -> None:
        self.url = os.environ.get(URL_VARIABLE, "")
        self._process: subprocess.Popen[bytes] | None = None
        self._directory: Path | None = None
        if not self.url:
            self._start()

    @property
    def private(self) -> bool:
        """True when this process started the server (and kills it at the end)."""
        return self._process is not None

    def _start(self) -> None:
        name = os.environ.get(BINARY_VARIABLE) or "redis-server"
        binary = shutil.which(name)
        if binary is None:
            raise RedisServerMissing(f"the flowjobs test kit needs {name!r}: {INSTALL_HINT}")
        self._directory = Path(tempfile.mkdtemp(prefix="flowjobs-test-redis-"))
        log = self._directory / "redis.log"
        for _attempt in range(3):  # another process may take the free port first
            port = _free_port()
            self._process = subprocess.Popen(
                [
                    *pdeathsig_prefix(),
                    binary,
                    *("--bind", "127.0.0.1", "--port", str(port)),
                    *("--save", "", "--appendonly", "no", "--daemonize", "no"),
                    *("--dir", str(self._directory), "--logfile", str(log)),
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            self.url = f"redis://127.0.0.1:{port}/0"
            if self._answers():
                return
            self._kill()
        tail = log.read_text(errors="replace")[-1000:] if log.exists() else ""
        self.close()
        raise RedisServerMissing(f"{binary} did not start (log tail: {tail!r}); {INSTALL_HINT}")

    def _answers(self) -> bool:
        deadline = time.monotonic() + START_TIMEOUT_S
        client = redis.Redis.from_url(self.url, socket_timeout=1, socket_connect_timeout=1)
        try:
            while time.monotonic() < deadline:
                if self._process is None or self._process.poll() is not None:
                    return False
                try:
                    return bool(client.ping())
                except redis.ConnectionError:
                    time.sleep(0.02)  # the server is still binding its port
            return False
        finally:
            client.close()

    def client(self, **options: object) -> redis.Redis:
        return redis.Redis.from_url(self.url, **options)  # type: ignore[arg-type]

    def delete_prefix(self, prefix: str) -> int:
        """Deletes every ``<prefix>:*`` key; returns how many."""
        with self.client(socket_timeout=10) as client:
            return delete_prefixed_keys(client, prefix)

    def _kill(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.send_signal(signal.SIGKILL)
            self._process.wait(10)
        self._process = None

    def close(self) -> None:
        self._kill()
        if self._directory is not None:
            shutil.rmtree(self._directory, ignore_errors=True)
            self._directory = None


_lock = threading.Lock()
_shared: TestRedis | None = None


def test_redis() -> TestRedis:
    """The test run's Redis, started on first call (one per process)."""
    global _shared
    with _lock:
        if _shared is None:
            _shared = TestRedis()
        return _shared


test_redis.__test__ = False  # type: ignore[attr-defined]


def stop_test_redis() -> None:
    """Stops the private server (the pytest plugin calls it at the end of the session)."""
    global _shared
    with _lock:
        server, _shared = _shared, None
    if server is not None:
        server.close()


atexit.register(stop_test_redis)
