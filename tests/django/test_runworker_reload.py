"""runworker --reload: a changed processor file restarts the worker with the new code;
a broken one makes it wait for the fix instead of exiting."""

from __future__ import annotations

import os
import signal
import textwrap
from pathlib import Path

import pytest
import redis

from flowjobs import conf
from tests.helpers import wait_for

PROCESSOR = """
import os

import redis

from flowjobs import processor
from flowjobs.conf import settings

@processor("reload-q")
def answer(job):
    return {{"version": {version}, "pid": os.getpid()}}

@processor("reload-q", name="slow")
def slow(job):
    # says it started, then holds on until the test releases it
    client = redis.Redis.from_url(settings().REDIS_URL)
    client.rpush(f"{{job.prefix}}:started", job.id)
    client.blpop([f"{{job.prefix}}:release"], timeout=30)
    return {{"version": {version}, "pid": os.getpid()}}
"""


def _write_processor(app: Path, source: str) -> None:
    path = app / "jobs.py"
    before = path.stat().st_mtime_ns if path.exists() else 0
    path.write_text(textwrap.dedent(source))
    # a change the reloader can see even on a file system with coarse timestamps
    if path.stat().st_mtime_ns <= before:
        os.utime(path, ns=(before + 1_000_000_000, before + 1_000_000_000))


@pytest.fixture
def reload_project(tmp_path: Path) -> dict[str, str]:
    app = tmp_path / "reloadapp"
    app.mkdir()
    (app / "__init__.py").write_text("")
    _write_processor(app, PROCESSOR.format(version=1))
    (tmp_path / "reload_settings.py").write_text(
        "from tests.settings import *  # noqa\nINSTALLED_APPS = [*INSTALLED_APPS, 'reloadapp']\n"
    )
    return {"app": str(app), "pythonpath": str(tmp_path)}


def _result(job_id: str):
    job = conf.get_queue("reload-q").get_job(job_id)
    return job.returnvalue if job is not None and job.get_state() == "completed" else None


def _run_one(job_name: str, timeout: float = 30.0) -> dict:
    job = conf.get_queue("reload-q").add(job_name)
    return wait_for(lambda: _result(job.id), timeout=timeout, message=f"job {job_name} ran")


def _change(worker, watchers: int, app: Path, source: str, noticed) -> None:
    """Once ``watchers`` reloaders have started, writes the processor file and waits
    until the worker noticed; writes it again when the reloader took its first look at
    the file only after the first write."""
    wait_for(
        lambda: worker.output().count("watching for file changes") >= watchers,
        timeout=20,
        message=worker.output,
    )
    for attempt in range(3):
        _write_processor(app, source + "\n" * attempt)
        try:
            wait_for(noticed, timeout=5, interval=0.05)
            return
        except AssertionError:
            continue  # written within the reloader's first scan: write it again
    raise AssertionError("the worker never noticed the change")


@pytest.mark.slow
def test_changed_processor_runs_after_reload(worker_env, start_worker, reload_project):
    env = {
        "DJANGO_SETTINGS_MODULE": "reload_settings",
        "PYTHONPATH": os.pathsep.join([reload_project["pythonpath"], worker_env["PYTHONPATH"]]),
    }
    worker = start_worker("reload-q", "--reload", "--no-mirror", env=env)
    app = Path(reload_project["app"])

    def restarts() -> int:
        return worker.output().count("jobs.py changed; restarting the worker")

    first = _run_one("before")
    assert first["version"] == 1
    # a job running when the file changes finishes with the code it started with
    slow = conf.get_queue("reload-q").add("slow")
    with redis.Redis.from_url(worker_env["FLOWJOBS_REDIS_URL"]) as client:
        prefix = worker_env["FLOWJOBS_PREFIX"]
        assert client.blpop([f"{prefix}:started"], timeout=30)
        _change(worker, 1, app, PROCESSOR.format(version=2), lambda: restarts() == 1)
        wait_for(lambda: "waiting for 1 active job(s)" in worker.output(), message=worker.output)
        client.rpush(f"{prefix}:release", "go")
    assert wait_for(lambda: _result(slow.id), timeout=30)["version"] == 1
    second = _run_one("after")
    assert second["version"] == 2, worker.output()
    assert second["pid"] != first["pid"]

    # a processor file that no longer imports: the worker waits for the fix
    _change(worker, 2, app, "this is not python\n", lambda: restarts() == 2)
    wait_for(
        lambda: "waiting for a file to change" in worker.output(),
        timeout=20,
        message=worker.output,
    )
    assert worker.proc.poll() is None, worker.output()
    _change(
        worker,
        3,
        app,
        PROCESSOR.format(version=3),
        lambda: "changed; restarting" in worker.output().split("waiting for a file to change")[-1],
    )
    assert _run_one("fixed", timeout=30)["version"] == 3, worker.output()

    worker.signal(signal.SIGTERM)
    assert worker.wait(20) == 0, worker.output()
