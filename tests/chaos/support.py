"""Helpers of the chaos tests: worker processes to kill, their execution records."""

from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

from flowjobs.testing.server import pdeathsig_prefix

ROOT = Path(__file__).resolve().parents[2]


class WorkerProcess:
    """One `tests/chaos/worker_proc.py` process; stderr (its log) goes to a file."""

    def __init__(
        self,
        url: str,
        prefix: str,
        queues: Sequence[str],
        record_dir: Path,
        log_dir: Path,
        **options: int | float,
    ) -> None:
        command = [
            *pdeathsig_prefix(),
            sys.executable,
            "-m",
            "tests.chaos.worker_proc",
            "--url",
            url,
            "--prefix",
            prefix,
            "--queues",
            ",".join(queues),
            "--record-dir",
            str(record_dir),
        ]
        for name, value in options.items():
            command += [f"--{name.replace('_', '-')}", str(value)]
        log_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = log_dir / f"worker-{len(list(log_dir.iterdir()))}.log"
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                command,
                cwd=ROOT,
                env={**os.environ, "PYTHONPATH": str(ROOT)},
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log,
            )

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: the worker gets no chance to finish or record anything."""
        if self.alive:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self, timeout: float = 15) -> None:
        """SIGTERM (graceful close), then SIGKILL if it does not exit in time."""
        if self.alive:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def read_executions(record_dir: Path) -> list[dict]:
    """Every execution the worker processes recorded, in no particular order."""
    executions = []
    for path in sorted(record_dir.glob("exec-*.jsonl")):
        for line in path.read_text().splitlines():
            if line.strip():
                executions.append(json.loads(line))
    return executions


def duplicates(executions: list[dict]) -> int:
    """Executions beyond the first of each job (at-least-once delivery at work)."""
    counts = collections.Counter((e["queue"], e["job"]) for e in executions)
    return sum(count - 1 for count in counts.values())


def hold(seconds: float) -> None:
    """Keeps a fault (a stopped or paused server) in place for `seconds`.

    This is the length of the simulated outage, not a way to wait for something
    to happen: every wait for an outcome polls a condition with a deadline.
    """
    threading.Event().wait(seconds)
