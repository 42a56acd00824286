"""Fixtures for the Django-layer tests: FLOWJOBS pointed at the private Redis, and
``runworker`` started as a real ``manage.py`` subprocess on the test database."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest

from flowjobs import conf

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def flowjobs_settings(settings, redis_url: str, prefix: str):  # noqa: ANN001, ANN201
    """Every test talks to the private Redis under its own key prefix."""
    settings.FLOWJOBS = {
        "REDIS_URL": redis_url,
        "PREFIX": prefix,
        "MIRROR": False,
    }
    yield settings
    conf.reset()


def database_url() -> str:
    """The test database as a DATABASE_URL, for worker subprocesses."""
    from django.db import connection

    info = connection.settings_dict
    if connection.vendor == "sqlite":
        return f"sqlite:///{info['NAME']}"
    user = quote(info.get("USER") or "")
    password = quote(info.get("PASSWORD") or "")
    auth = f"{user}:{password}@" if password else (f"{user}@" if user else "")
    host = info.get("HOST") or "127.0.0.1"
    port = f":{info['PORT']}" if info.get("PORT") else ""
    return f"postgres://{auth}{host}{port}/{info['NAME']}"


class WorkerProcess:
    """``manage.py runworker ...`` (or another command) in the background, output in a file."""

    def __init__(self, args: list[str], env: dict[str, str], command: str = "runworker") -> None:
        self.log = tempfile.NamedTemporaryFile(  # noqa: SIM115 - closed in stop()
            mode="w+", prefix=f"flowjobs-{command}-", suffix=".log", delete=False
        )
        self.proc = subprocess.Popen(
            [sys.executable, str(REPO / "manage.py"), command, *args],
            cwd=REPO,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def output(self) -> str:
        return Path(self.log.name).read_text()

    def signal(self, number: int) -> None:
        self.proc.send_signal(number)

    def wait(self, timeout: float = 30.0) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"runworker did not exit within {timeout}s; output:\n{self.output()}"
            ) from None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        os.unlink(self.log.name)


@pytest.fixture
def worker_env(django_db_setup, redis_url: str, prefix: str) -> dict[str, str]:  # noqa: ANN001
    env = dict(os.environ)
    env.update(
        DJANGO_SETTINGS_MODULE="tests.settings",
        FLOWJOBS_REDIS_URL=redis_url,
        FLOWJOBS_PREFIX=prefix,
        FLOWJOBS_MIRROR="false",
        DATABASE_URL=database_url(),
        PYTHONPATH=str(REPO),
        PYTHONUNBUFFERED="1",
    )
    return env


@pytest.fixture
def start_worker(worker_env: dict[str, str]) -> Iterator:
    started: list[WorkerProcess] = []

    def start(*args: str, env: dict[str, str] | None = None) -> WorkerProcess:
        process = WorkerProcess(list(args), {**worker_env, **(env or {})})
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()
