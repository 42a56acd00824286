"""Drive the Node.js BullMQ scripts (and the bullmq-py driver) from pytest.

Every script prints one JSON object per line on stdout. `JsonLineProcess`
runs one in the background, collects those lines on a reader thread and lets a
test wait for a line with a deadline. `NodeHarness` starts workers, event
listeners and a long-lived producer against one Redis URL and key prefix, and
kills whatever is still running when the test ends.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

INTEROP_DIR = Path(__file__).resolve().parent
NODE_MODULES = INTEROP_DIR / "node_modules"
BULLMQ_NODE_VERSION = "6.7.0"
# The official Python port, installed into a scratch virtualenv by the
# `bullmq_py` fixture (never into the project's requirements).
BULLMQ_PY_VERSION = "3.4.4"
BULLMQ_PY_VENV = Path(
    os.environ.get(
        "FLOWJOBS_INTEROP_PYVENV",
        Path.home() / ".cache" / "flowjobs-interop" / f"pyvenv-bullmq-{BULLMQ_PY_VERSION}",
    )
)
PROJECT_PYTHON = Path(sys.executable)

Line = dict[str, Any]
Predicate = Callable[[Line], bool]


class HarnessError(AssertionError):
    """A script misbehaved, or an expected line did not arrive in time."""


class CommandFailed(HarnessError):
    """A producer command answered {"ok": false}."""

    def __init__(self, cmd: str, error: dict[str, Any]) -> None:
        self.cmd = cmd
        self.error = error
        super().__init__(f"{cmd} failed: {error.get('name')}: {error.get('message')}")


def node_binary() -> str:
    node = shutil.which("node")
    if node is None:
        raise HarnessError("`node` is not on PATH; the interop tests need Node.js >= 20")
    return node


def check_node_modules() -> str | None:
    """Return why the Node side cannot run, or None when it can."""
    installed = NODE_MODULES / "bullmq" / "package.json"
    if not installed.exists():
        return (
            f"{NODE_MODULES} is missing: run `npm ci` in {INTEROP_DIR} "
            "(CI does this before the interop tests)"
        )
    version = json.loads(installed.read_text())["version"]
    if version != BULLMQ_NODE_VERSION:
        return (
            f"tests/interop has bullmq {version} installed, package.json pins "
            f"{BULLMQ_NODE_VERSION}: run `npm ci` in {INTEROP_DIR}"
        )
    return None


def _matches(line: Line, fields: dict[str, Any]) -> bool:
    return all(line.get(key) == value for key, value in fields.items())


class LineLog:
    """JSON lines arriving from somewhere (a child process, or callbacks of an
    in-process worker), with waits that have deadlines."""

    def __init__(self, label: str) -> None:
        self.label = label
        self._lines: list[Line] = []
        self._cond = threading.Condition()
        self._eof = False

    def append(self, line: Line) -> None:
        with self._cond:
            self._lines.append(line)
            self._cond.notify_all()

    def close_log(self) -> None:
        with self._cond:
            self._eof = True
            self._cond.notify_all()

    @property
    def lines(self) -> list[Line]:
        with self._cond:
            return list(self._lines)

    def where(self, event: str | None = None, **fields: Any) -> list[Line]:
        return [
            line
            for line in self.lines
            if (event is None or line.get("event") == event) and _matches(line, fields)
        ]

    def describe(self, last: int = 25) -> str:
        tail = "\n".join(json.dumps(line, default=repr)[:400] for line in self.lines[-last:])
        return f"[{self.label}]\n--- last lines ---\n{tail}"

    def wait_for(
        self, predicate: Predicate, timeout: float = 30.0, message: str = "", start: int = 0
    ) -> Line:
        """Return the first line (from index `start`) matching `predicate`."""
        deadline = time.monotonic() + timeout
        with self._cond:
            index = start
            while True:
                while index < len(self._lines):
                    if predicate(self._lines[index]):
                        return self._lines[index]
                    index += 1
                remaining = deadline - time.monotonic()
                if self._eof or remaining <= 0:
                    break
                self._cond.wait(min(remaining, 0.5))
        reason = "ended" if self._eof else f"timed out after {timeout}s"
        raise HarnessError(f"{self.label} {reason} waiting for {message}\n{self.describe()}")

    def expect(self, event: str, timeout: float = 30.0, **fields: Any) -> Line:
        """Wait for a line with this `event` whose fields equal `fields`."""
        return self.wait_for(
            lambda line: line.get("event") == event and _matches(line, fields),
            timeout,
            f"{event} {fields}",
        )

    def expect_count(self, event: str, count: int, timeout: float = 30.0, **fields: Any) -> list:
        """Wait until `count` lines match, and return them."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = [
                    line
                    for line in self._lines
                    if line.get("event") == event and _matches(line, fields)
                ]
                remaining = deadline - time.monotonic()
                if len(found) >= count or self._eof or remaining <= 0:
                    break
                self._cond.wait(min(remaining, 0.5))
        if len(found) < count:
            raise HarnessError(
                f"{self.label}: wanted {count} x {event} {fields}, got {len(found)}\n"
                f"{self.describe()}"
            )
        return found

    def queue_events(self, name: str | None = None, **fields: Any) -> list[Line]:
        """The `queue-event` lines of an events listener (optionally one event name)."""
        return [
            line
            for line in self.where("queue-event")
            if (name is None or line["name"] == name) and _matches(line["fields"], fields)
        ]

    def expect_queue_event(self, name: str, timeout: float = 30.0, **fields: Any) -> Line:
        return self.wait_for(
            lambda line: (
                line.get("event") == "queue-event"
                and line["name"] == name
                and _matches(line["fields"], fields)
            ),
            timeout,
            f"queue event {name} {fields}",
        )


class JsonLineProcess(LineLog):
    """A child process whose stdout is JSON lines, read on a background thread."""

    def __init__(self, argv: list[str], *, label: str, stdin: bool = False) -> None:
        super().__init__(label)
        self.argv = argv
        self._stderr: list[str] = []
        self.proc = subprocess.Popen(
            argv,
            cwd=INTEROP_DIR,
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            bufsize=1,
            start_new_session=True,
        )
        self._threads = [
            threading.Thread(target=self._read_stdout, daemon=True),
            threading.Thread(target=self._read_stderr, daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        with contextlib.suppress(ValueError):  # closed by _finish after its wait for EOF
            for raw in self.proc.stdout:
                raw = raw.strip()
                if not raw:
                    continue
                try:
                    line = json.loads(raw)
                except json.JSONDecodeError:
                    line = {"event": "unparsed", "text": raw}
                self.append(line)
        self.close_log()

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        with contextlib.suppress(ValueError):
            for raw in self.proc.stderr:
                with self._cond:
                    self._stderr.append(raw.rstrip("\n"))

    @property
    def stderr(self) -> str:
        with self._cond:
            return "\n".join(self._stderr)

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def describe(self, last: int = 25) -> str:
        return (
            f"{super().describe(last)}\npid={self.proc.pid} returncode={self.proc.poll()}"
            f"\n--- stderr ---\n{self.stderr[-3000:]}"
        )

    def wait_exit(self, timeout: float = 30.0) -> int:
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired as exc:
            raise HarnessError(f"{self.label} did not exit\n{self.describe()}") from exc
        for thread in self._threads:
            thread.join(timeout=5)
        return code

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM (the scripts close their queue objects), then SIGKILL."""
        if self.alive:
            try:
                self.proc.send_signal(signal.SIGTERM)
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
            except ProcessLookupError:
                pass
        return self._finish()

    def kill(self) -> int | None:
        """SIGKILL: the process dies in the middle of whatever it was doing."""
        if self.alive:
            try:
                self.proc.send_signal(signal.SIGKILL)
            except ProcessLookupError:
                pass
        return self._finish()

    def _finish(self) -> int | None:
        try:
            code = self.proc.wait(10)
        except subprocess.TimeoutExpired:
            return None
        # the readers end at the pipes' EOF; closing a pipe under a reader that has not
        # got there yet loses its last lines and raises in its thread
        for thread in self._threads:
            thread.join(5)
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if stream is not None:
                try:
                    stream.close()
                except (OSError, ValueError):
                    pass
        return code


class CommandProcess(JsonLineProcess):
    """A long-lived `--serve` process: one JSON command in, one JSON line out."""

    def __init__(self, argv: list[str], *, label: str) -> None:
        super().__init__(argv, label=label, stdin=True)
        self._lock = threading.Lock()
        self.wait_for(lambda line: line.get("cmd") == "ready", 30, "the command loop")

    def call(self, cmd: str, timeout: float = 30.0, **fields: Any) -> Any:
        """Run one command and return its result; raise CommandFailed on error."""
        with self._lock:
            start = len(self.lines)
            assert self.proc.stdin is not None
            if not self.alive:
                raise HarnessError(f"{self.label} is not running\n{self.describe()}")
            self.proc.stdin.write(json.dumps({"cmd": cmd, **fields}) + "\n")
            self.proc.stdin.flush()
            answer = self.wait_for(
                lambda line: "ok" in line and line.get("cmd") != "ready",
                timeout,
                f"the answer to {cmd}",
                start=start,
            )
        if not answer["ok"]:
            raise CommandFailed(cmd, answer.get("error") or {})
        return answer.get("result")

    def __getattr__(self, cmd: str) -> Callable[..., Any]:
        # producer.add(queue="q", name="n", data={...}) == call("add", queue=...)
        if cmd.startswith("_"):
            raise AttributeError(cmd)
        return lambda **fields: self.call(cmd, **fields)

    def close(self) -> int | None:
        if self.alive and self.proc.stdin is not None:
            try:
                self.proc.stdin.close()
                self.proc.wait(10)
            except (OSError, subprocess.TimeoutExpired):
                pass
        return self.stop()


class NodeHarness:
    """Node.js BullMQ processes on one Redis URL and key prefix."""

    side = "node"

    def __init__(self, redis_url: str, prefix: str) -> None:
        self.redis_url = redis_url
        self.prefix = prefix
        self._processes: list[JsonLineProcess] = []
        self._producer: CommandProcess | None = None

    def _argv(self, script: str, spec: Any = None, *extra: str) -> list[str]:
        argv = [
            node_binary(),
            script,
            "--redis-url",
            self.redis_url,
            "--prefix",
            self.prefix,
        ]
        if spec is not None:
            argv += ["--spec", json.dumps(spec)]
        return argv + list(extra)

    def _track(self, proc: JsonLineProcess) -> JsonLineProcess:
        self._processes.append(proc)
        return proc

    def worker(self, spec: dict[str, Any], *, wait_ready: bool = True) -> JsonLineProcess:
        """Start worker.cjs; by default wait until its Workers are connected."""
        proc = self._track(
            JsonLineProcess(self._argv("worker.cjs", spec), label=f"node worker {spec}")
        )
        if wait_ready:
            proc.expect("ready", timeout=30)
        return proc

    def worker_process(self, spec: dict[str, Any]) -> JsonLineProcess:
        """A worker a test may SIGKILL mid-job (every Node worker is a process)."""
        return self.worker(spec)

    def events(self, spec: dict[str, Any], *, wait_ready: bool = True) -> JsonLineProcess:
        """Start events.cjs (a QueueEvents listener, from the stream start by default)."""
        proc = self._track(
            JsonLineProcess(self._argv("events.cjs", spec), label=f"node events {spec}")
        )
        if wait_ready:
            proc.expect("ready", timeout=30)
        return proc

    @property
    def producer(self) -> CommandProcess:
        """A long-lived producer.cjs --serve (started on first use)."""
        if self._producer is None or not self._producer.alive:
            self._producer = CommandProcess(
                self._argv("producer.cjs", None, "--serve"), label="node producer"
            )
            self._track(self._producer)
        return self._producer

    def run(self, commands: Iterable[dict[str, Any]], timeout: float = 60.0) -> list[Line]:
        """Run producer.cjs once with a list of commands; return its answers."""
        proc = self._track(
            JsonLineProcess(
                self._argv("producer.cjs", list(commands)),
                label="node producer (batch)",
            )
        )
        proc.wait_exit(timeout)
        return proc.lines

    def close(self) -> None:
        for proc in reversed(self._processes):
            if isinstance(proc, CommandProcess):
                proc.close()
            else:
                proc.stop(timeout=5)
        self._processes.clear()


class BullmqPyHarness:
    """The official Python `bullmq` package, run from its scratch virtualenv."""

    def __init__(self, python: Path, redis_url: str, prefix: str) -> None:
        self.python = python
        self.redis_url = redis_url
        self.prefix = prefix
        self._processes: list[JsonLineProcess] = []
        self._producer: CommandProcess | None = None

    def _argv(self, mode: str, spec: Any = None) -> list[str]:
        argv = [
            str(self.python),
            str(INTEROP_DIR / "pyside_bullmq.py"),
            mode,
            "--redis-url",
            self.redis_url,
            "--prefix",
            self.prefix,
        ]
        if spec is not None:
            argv += ["--spec", json.dumps(spec)]
        return argv

    def worker(self, spec: dict[str, Any], *, wait_ready: bool = True) -> JsonLineProcess:
        proc = JsonLineProcess(self._argv("worker", spec), label=f"bullmq-py worker {spec}")
        self._processes.append(proc)
        if wait_ready:
            proc.expect("ready", timeout=30)
        return proc

    @property
    def producer(self) -> CommandProcess:
        if self._producer is None or not self._producer.alive:
            self._producer = CommandProcess(self._argv("serve"), label="bullmq-py producer")
            self._processes.append(self._producer)
        return self._producer

    def close(self) -> None:
        for proc in reversed(self._processes):
            if isinstance(proc, CommandProcess):
                proc.close()
            else:
                proc.stop(timeout=5)
        self._processes.clear()


def ensure_bullmq_py_venv() -> Path:
    """Create the scratch virtualenv with bullmq-py once; return its python."""
    python = BULLMQ_PY_VENV / "bin" / "python"
    marker = BULLMQ_PY_VENV / ".flowjobs-ready"
    if marker.exists() and python.exists():
        return python
    BULLMQ_PY_VENV.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [str(PROJECT_PYTHON), "-m", "venv", "--clear", str(BULLMQ_PY_VENV)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "-q", f"bullmq=={BULLMQ_PY_VERSION}"],
        check=False,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if install.returncode != 0:
        raise HarnessError(
            f"pip install bullmq=={BULLMQ_PY_VERSION} into {BULLMQ_PY_VENV} failed:\n"
            f"{install.stdout[-2000:]}\n{install.stderr[-2000:]}"
        )
    marker.write_text(BULLMQ_PY_VERSION + "\n")
    return python
