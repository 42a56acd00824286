"""The example site: migrate, loaddemo, and a real runworker finishing every demo flow."""

from __future__ import annotations

import signal
import subprocess
import sys

from flowjobs import conf
from tests.django.conftest import REPO
from tests.helpers import wait_for


def _manage(env: dict[str, str], *args: str) -> str:
    """Runs manage.py; returns its output (stdout, then stderr)."""
    result = subprocess.run(
        [sys.executable, str(REPO / "manage.py"), *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout + result.stderr


def test_demo_flows_all_finish(worker_env, start_worker, tmp_path):
    env = {
        **worker_env,
        "DJANGO_SETTINGS_MODULE": "example_project.settings",
        "DATABASE_URL": f"sqlite:///{tmp_path / 'demo.sqlite3'}",
        "DEMO_JOB_SECONDS": "0",
    }
    _manage(env, "migrate", "--noinput", "-v", "0")
    output = _manage(env, "loaddemo", "--count", "1", "--chunks", "3", "--pause-ms", "10")
    assert "added 5 demo flows/jobs" in output

    worker = start_worker("--no-mirror", "--concurrency", "4", env=env)

    def counts(queue: str, state: str) -> int:
        return conf.get_queue(queue).get_job_counts(state)[state]

    expected = {
        "reports": 1,
        "report-fetch": 2,
        "etl": 3,
        "payments": 1,
        "inventory": 1,
        "orders": 1,
        "steps": 1,
        "mapreduce": 4,
    }
    wait_for(
        lambda: all(counts(q, "completed") == n for q, n in expected.items()),
        timeout=60,
        message="demo flows did not finish",
    )
    assert counts("notifications", "failed") == 1  # the optional SMS, ignored by its order

    (order,) = conf.get_queue("orders").get_jobs(["completed"])
    assert order.returnvalue["steps_done"] == 2
    assert order.returnvalue["optional_failures"] == ["SMS gateway refused +15550000001"]
    (reduce_job,) = [
        j for j in conf.get_queue("mapreduce").get_jobs(["completed"]) if j.name == "reduce"
    ]
    assert reduce_job.returnvalue == {
        "chunks": 3,
        "sum_of_squares": sum(n * n for n in range(3000)),
    }
    (report,) = conf.get_queue("reports").get_jobs(["completed"])
    assert report.returnvalue["sources"] == ["sales", "traffic"]
    (step_job,) = conf.get_queue("steps").get_jobs(["completed"])
    assert step_job.returnvalue == {"user": "user1", "steps": 3}
    assert step_job.data["step"] == 3

    worker.signal(signal.SIGTERM)
    assert worker.wait() == 0, worker.output()


def test_demo_tests_pass_with_the_test_kit(tmp_path):
    """The example project's own tests (example_project/demo/tests.py) use flowjobs.testing,
    run by Django's test runner with a private redis-server of their own."""
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLOWJOBS_", "DJANGO_"))}
    env.update(
        DJANGO_SETTINGS_MODULE="example_project.settings",
        DATABASE_URL=f"sqlite:///{tmp_path / 'demo.sqlite3'}",
        PYTHONPATH=str(REPO),
    )
    output = _manage(env, "test", "example_project.demo", "-v", "2")
    assert "Ran 5 tests" in output and "\nOK" in output, output


def test_the_demos_more_commands_reach_the_demos_redis(worker_env, redis_url, tmp_path):
    """The commands the demo prints under "more:" carry its Redis URL: pasted into
    another terminal (where FLOWJOBS_REDIS_URL is not set) they see the demo's queues."""
    conf.get_queue("demo-hinted").add("job", {})
    hints = subprocess.run(
        ["bash", str(REPO / ".ci" / "demo-hints")],
        env={"PATH": worker_env["PATH"], "FLOWJOBS_REDIS_URL": redis_url},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    commands = [line.replace("more:", "").strip() for line in hints.splitlines()]
    assert commands and all(
        command.startswith(f"FLOWJOBS_REDIS_URL={redis_url} ") for command in commands
    )
    queues = next(command for command in commands if command.endswith("flowjobs queues"))
    terminal = {key: value for key, value in worker_env.items() if key != "FLOWJOBS_REDIS_URL"}
    terminal.update(
        DJANGO_SETTINGS_MODULE="example_project.settings",
        DATABASE_URL=f"sqlite:///{tmp_path / 'demo.sqlite3'}",
    )
    result = subprocess.run(
        ["bash", "-c", queues], cwd=REPO, env=terminal, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    hinted = next(line for line in result.stdout.splitlines() if line.startswith("demo-hinted"))
    assert hinted.split()[2] == "1"  # its one waiting job
