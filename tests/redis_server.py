"""A private redis-server for tests.

Each `RedisServer` runs its own `redis-server` process on a free loopback port,
in a temporary directory of its own, with persistence off unless asked for. It
can be stopped, started again on the same port and directory, killed, and
paused, so tests can simulate restarts, crashes and hangs of Redis.

The suite must FAIL, never skip, when Redis cannot run: a missing binary or a
server that does not come up raises `RedisServerError` with the reason and the
tail of the server's log.

Servers never outlive the test process: they are killed at interpreter exit
(atexit), and servers started from the main thread also get a parent-death
signal, so even a SIGKILLed pytest worker leaves no redis-server behind.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from flowjobs.testing.server import pdeathsig_prefix

__all__ = ["RedisServer", "RedisServerError", "free_port"]

START_TIMEOUT = 10.0
STOP_TIMEOUT = 10.0

_live: set[RedisServer] = set()
_live_lock = threading.Lock()


def _no_retry() -> Retry:
    # redis-py retries failed connections with backoff by default; probing a server
    # that is still starting, or shutting one down, wants the answer at once.
    return Retry(NoBackoff(), 0)


class RedisServerError(RuntimeError):
    """redis-server is missing, or did not start or stop as asked."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listened on a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _kill_leftovers() -> None:
    with _live_lock:
        servers = list(_live)
    for server in servers:
        server.close()


atexit.register(_kill_leftovers)


def _find_binary(binary: str | None) -> str:
    candidate = binary or os.environ.get("FLOWJOBS_REDIS_SERVER") or "redis-server"
    found = shutil.which(candidate)
    if found is None:
        raise RedisServerError(
            f"redis-server binary {candidate!r} not found: the test suite needs a real Redis "
            "(run `bash .ci/setup`, or `apt-get install -y redis-server`)"
        )
    return found


def _option_value(args: Sequence[str], name: str) -> str | None:
    """The last value given for `--name` on a redis-server command line (later ones win)."""
    value = None
    for index, arg in enumerate(args[:-1]):
        if arg == f"--{name}":
            value = args[index + 1]
    return value


class RedisServer:
    """A redis-server of the test's own.

    `RedisServer()` starts at once (pass `start=False` to start later). `extra_args`
    go after the defaults and so override them, e.g. `["--appendonly", "yes"]`.
    `password=` adds `--requirepass` and puts it in `url`; `tls=True` serves TLS
    only, with a self-signed certificate made in the server's directory (needs
    `openssl`), and `url` becomes `rediss://...?ssl_ca_certs=...`.
    """

    host = "127.0.0.1"

    def __init__(
        self,
        extra_args: Sequence[str] = (),
        *,
        port: int | None = None,
        password: str | None = None,
        tls: bool = False,
        binary: str | None = None,
        start: bool = True,
    ) -> None:
        self.binary = _find_binary(binary)
        self.extra_args = list(extra_args)
        self.password = password
        self.tls = tls
        self._fixed_port = port is not None
        self.port = port if port is not None else free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="flowjobs-redis-"))
        self.log_path = self.dir / "redis.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._paused = False
        try:
            if tls:
                self._make_certificate()
            if start:
                self.start()
        except BaseException:
            self.close()
            raise

    # -- addresses ---------------------------------------------------------------------------

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        if self.tls:
            return f"rediss://{auth}{self.host}:{self.port}/0?ssl_ca_certs={self.dir / 'ca.crt'}"
        return f"redis://{auth}{self.host}:{self.port}/0"

    @property
    def pid(self) -> int | None:
        """The server's process id while it runs (paused counts as running), else None."""
        if self._proc is None or self._proc.poll() is not None:
            return None
        return self._proc.pid

    @property
    def running(self) -> bool:
        return self.pid is not None

    @property
    def paused(self) -> bool:
        return self._paused and self.running

    @property
    def persistent(self) -> bool:
        """True when the server writes its data to disk (AOF or RDB save points)."""
        appendonly = _option_value(self.extra_args, "appendonly") == "yes"
        save = _option_value(self.extra_args, "save")
        return appendonly or bool(save and save.strip())

    def client(self, **kwargs: Any) -> redis.Redis:
        """A redis-py client for this server (bytes replies unless decode_responses=True)."""
        kwargs.setdefault("decode_responses", False)
        return redis.Redis.from_url(self.url, **kwargs)

    # -- life cycle --------------------------------------------------------------------------

    def start(self, timeout: float = START_TIMEOUT) -> None:
        """Start (again) on the same port and directory; returns once it answers PING."""
        if self.running:
            raise RedisServerError(f"redis-server on port {self.port} is already running")
        attempts = 1 if self._fixed_port or self._proc is not None else 3
        for attempt in range(attempts):
            try:
                self._spawn_and_wait(timeout)
                return
            except RedisServerError:
                # Another process may have taken the port between free_port() and the
                # bind; a first start may pick a new one, a restart must keep its port.
                if attempt == attempts - 1 or not self._port_taken():
                    raise
                self.port = free_port()

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Shut down cleanly: SHUTDOWN NOSAVE, or SHUTDOWN (which persists) with persistence on."""
        if not self.running:
            return
        self.unpause()
        try:
            with self.client(
                socket_timeout=timeout, socket_connect_timeout=timeout, retry=_no_retry()
            ) as client:
                # Plain SHUTDOWN persists as configured (AOF fsync, RDB save points).
                client.shutdown(nosave=not self.persistent)
        except (redis.ConnectionError, redis.TimeoutError):
            pass  # the server dropped the connection before answering: it is going
        except redis.RedisError as exc:
            raise RedisServerError(
                f"redis-server on port {self.port} refused SHUTDOWN: {exc}; "
                f"log tail:\n{self.log_tail()}"
            ) from exc
        self._reap(timeout, kill_after=True)

    def kill(self) -> None:
        """SIGKILL: a crash, with no chance to save anything."""
        if self._proc is None or self._proc.poll() is not None:
            return
        self._signal(signal.SIGKILL)
        self._reap(STOP_TIMEOUT, kill_after=False)

    def pause(self) -> None:
        """SIGSTOP: the server keeps its connections open but answers nothing."""
        if not self.running:
            raise RedisServerError(f"redis-server on port {self.port} is not running")
        self._signal(signal.SIGSTOP)
        self._paused = True

    def unpause(self) -> None:
        """SIGCONT after pause()."""
        if self.running:
            self._signal(signal.SIGCONT)
        self._paused = False

    def restart(self, timeout: float = START_TIMEOUT) -> None:
        self.stop(timeout)
        self.start(timeout)

    def ensure_running(self) -> None:
        """Bring a paused, stopped or killed server back (used between tests)."""
        if self.paused:
            self.unpause()
        if not self.running:
            self.start()

    def close(self) -> None:
        """Kill the server and remove its directory."""
        self._kill_process()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> RedisServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "paused" if self.paused else "running" if self.running else "stopped"
        return f"<RedisServer {self.host}:{self.port} {state} dir={self.dir}>"

    def log_tail(self, chars: int = 2000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    # -- internals ---------------------------------------------------------------------------

    def _command(self) -> list[str]:
        args = [
            self.binary,
            "--bind",
            self.host,
            "--dir",
            str(self.dir),
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "no",
            # Redis writes its own log here; stdout/stderr go to the same file for
            # anything printed before the log is open (bad arguments, for instance).
            "--logfile",
            str(self.log_path),
        ]
        if self.tls:
            args += [
                "--port",
                "0",
                "--tls-port",
                str(self.port),
                "--tls-cert-file",
                str(self.dir / "server.crt"),
                "--tls-key-file",
                str(self.dir / "server.key"),
                "--tls-ca-cert-file",
                str(self.dir / "ca.crt"),
                "--tls-auth-clients",
                "no",
            ]
        else:
            args += ["--port", str(self.port)]
        if self.password:
            args += ["--requirepass", self.password]
        return [*pdeathsig_prefix(), *args, *self.extra_args]

    def _spawn_and_wait(self, timeout: float) -> None:
        with open(self.log_path, "ab") as log:
            proc = subprocess.Popen(
                self._command(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                # Its own process group: signals aimed at it never hit pytest, and
                # close() can take down anything it started.
                start_new_session=True,
            )
        self._proc = proc
        self._paused = False
        with _live_lock:
            _live.add(self)
        deadline = time.monotonic() + timeout
        while True:
            code = proc.poll()
            if code is not None:
                self._forget()
                raise RedisServerError(
                    f"redis-server on port {self.port} exited with code {code} while "
                    f"starting; log tail:\n{self.log_tail()}"
                )
            if self._answers_ping():
                return
            if time.monotonic() > deadline:
                self._kill_process()
                raise RedisServerError(
                    f"redis-server on port {self.port} did not answer PING within "
                    f"{timeout}s; log tail:\n{self.log_tail()}"
                )
            time.sleep(0.01)

    def _kill_process(self) -> None:
        # SIGKILL also ends a SIGSTOPped process; no SIGCONT needed.
        if self._proc is not None and self._proc.poll() is None:
            self._signal(signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(STOP_TIMEOUT)
        self._paused = False
        self._forget()

    def _answers_ping(self) -> bool:
        """True once OUR process answers: another server may hold the port we asked for."""
        assert self._proc is not None
        try:
            with self.client(
                socket_timeout=1, socket_connect_timeout=1, retry=_no_retry()
            ) as client:
                client.ping()
                answering_pid = client.info("server")["process_id"]
        except (redis.ConnectionError, redis.TimeoutError, OSError):
            return False
        return answering_pid == self._proc.pid

    def _port_taken(self) -> bool:
        tail = self.log_tail()
        return "Address already in use" in tail or "Could not create server TCP" in tail

    def _signal(self, signum: int) -> None:
        assert self._proc is not None
        try:
            os.killpg(self._proc.pid, signum)
        except ProcessLookupError:
            pass

    def _reap(self, timeout: float, *, kill_after: bool) -> None:
        assert self._proc is not None
        try:
            self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            if not kill_after:
                raise RedisServerError(
                    f"redis-server on port {self.port} (pid {self._proc.pid}) did not exit"
                ) from None
            self._signal(signal.SIGKILL)
            self._proc.wait(STOP_TIMEOUT)
        self._paused = False
        self._forget()

    def _forget(self) -> None:
        with _live_lock:
            _live.discard(self)

    def _make_certificate(self) -> None:
        openssl = shutil.which("openssl")
        if openssl is None:
            raise RedisServerError(
                "RedisServer(tls=True) needs the openssl command (apt-get install -y openssl)"
            )

        def run(*args: str) -> None:
            result = subprocess.run(
                [openssl, *args], cwd=self.dir, capture_output=True, text=True, check=False
            )
            if result.returncode != 0:
                raise RedisServerError(f"openssl {args[0]} failed: {result.stderr[-2000:]}")

        # Extensions as Python 3.13's strict X.509 verification wants them: a real CA
        # (critical basicConstraints, keyUsage) and a leaf with key identifiers.
        run(
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            "-subj", "/CN=flowjobs-test-ca", "-keyout", "ca.key", "-out", "ca.crt",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign",
            "-addext", "subjectKeyIdentifier=hash",
        )  # fmt: skip
        run(
            "req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
            "-keyout", "server.key", "-out", "server.csr",
        )  # fmt: skip
        (self.dir / "server.ext").write_text(
            "basicConstraints=critical,CA:FALSE\n"
            "keyUsage=critical,digitalSignature,keyEncipherment\n"
            "extendedKeyUsage=serverAuth\n"
            "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
            "subjectKeyIdentifier=hash\n"
            "authorityKeyIdentifier=keyid,issuer\n"
        )
        run(
            "x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
            "-CAcreateserial", "-days", "2", "-extfile", "server.ext", "-out", "server.crt",
        )  # fmt: skip
