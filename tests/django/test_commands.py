"""manage.py flowjobs (queue tools) and checkstalled."""

from __future__ import annotations

import io

import pytest
from django.core.management import CommandError, call_command

from flowjobs import Worker, conf
from tests.helpers import wait_for


def run(*args: str) -> str:
    out = io.StringIO()
    call_command(*args, stdout=out)
    return out.getvalue()


def _fail_one(queue_name: str, redis_url: str, prefix: str) -> str:
    """A failed job made the way a worker fails it (manual processing)."""
    queue = conf.get_queue(queue_name)
    job = queue.add("broken", {})
    worker = Worker(queue_name, None, connection=redis_url, prefix=prefix)
    taken = worker.get_next_job("tok", block=False)
    taken.move_to_failed(RuntimeError("boom"), "tok")
    return job.id


def test_queues_lists_registered_and_redis_queues_with_counts(redis_url, prefix):
    conf.get_queue("only-in-redis").add("x", {})
    conf.get_queue("only-in-redis").add("y", {}, delay=60_000)
    conf.get_queue("fj-echo").pause()
    output = run("flowjobs", "queues")
    lines = {line.split()[0]: line.split() for line in output.splitlines()}
    assert lines["queue"][:4] == ["queue", "paused", "waiting", "prioritized"]
    assert lines["only-in-redis"][1:5] == ["no", "1", "0", "1"]
    assert lines["fj-echo"][1] == "yes"
    assert "fj-slow" in lines  # registered, nothing in Redis yet


def test_pause_and_resume():
    queue = conf.get_queue("fj-echo")
    assert run("flowjobs", "pause", "fj-echo").strip() == "paused fj-echo"
    assert queue.is_paused()
    run("flowjobs", "resume", "fj-echo")
    assert not queue.is_paused()


def test_retry_failed_jobs(redis_url, prefix):
    job_id = _fail_one("tools", redis_url, prefix)
    assert conf.get_queue("tools").get_job_state(job_id) == "failed"
    assert "retried 1 failed job(s) of tools" in run("flowjobs", "retry", "tools")
    assert conf.get_queue("tools").get_job_state(job_id) == "waiting"


def test_clean_completed_jobs(redis_url, prefix):
    queue = conf.get_queue("tools")
    ids = [_fail_one("tools", redis_url, prefix) for _ in range(3)]
    output = run("flowjobs", "clean", "tools", "--state", "failed", "--grace", "0", "--limit", "2")
    assert "removed 2 failed job(s) of tools" in output
    assert sum(queue.get_job(i) is None for i in ids) == 2


def test_obliterate_asks_for_confirmation(monkeypatch):
    queue = conf.get_queue("tools")
    queue.add("x", {})
    monkeypatch.setattr("sys.stdin", io.StringIO("no\n"))
    with pytest.raises(CommandError, match="not confirmed"):
        run("flowjobs", "obliterate", "tools")
    assert queue.count() == 1
    monkeypatch.setattr("sys.stdin", io.StringIO("tools\n"))
    assert "obliterated tools" in run("flowjobs", "obliterate", "tools")
    assert queue.count() == 0 and not queue.client.exists(queue.keys.meta)


def test_obliterate_with_yes_and_active_jobs(redis_url, prefix):
    queue = conf.get_queue("tools")
    queue.add("x", {})
    Worker("tools", None, connection=redis_url, prefix=prefix).get_next_job("tok", block=False)
    with pytest.raises(CommandError, match="active jobs"):
        run("flowjobs", "obliterate", "tools", "--yes")
    run("flowjobs", "obliterate", "tools", "--yes", "--force")
    assert queue.get_job_counts("active") == {"active": 0}


def test_redis_errors_are_command_errors(settings):
    settings.FLOWJOBS = {**settings.FLOWJOBS, "REDIS_URL": "redis://:pw@127.0.0.1:9/0"}
    with pytest.raises(CommandError, match=r"Redis error at redis://:\*\*\*@127.0.0.1:9/0"):
        run("flowjobs", "pause", "tools")


def test_checkstalled_once_moves_a_job_whose_lock_expired(redis_url, prefix):
    queue = conf.get_queue("tools")
    job = queue.add("x", {})
    worker = Worker("tools", None, connection=redis_url, prefix=prefix, lock_duration=50)
    assert worker.get_next_job("tok", block=False).id == job.id
    assert queue.get_job_state(job.id) == "active"
    # The first check marks the active jobs, a later one moves those whose lock expired.
    outputs: list[str] = []

    def moved() -> bool:
        outputs.append(run("checkstalled", "tools", "--once", "--interval", "1"))
        return f"tools {job.id}" in outputs[-1]

    wait_for(moved, timeout=10, message=f"never moved; outputs: {outputs}")
    assert queue.get_job_state(job.id) == "waiting"
    assert "no stalled jobs" in outputs[0]


def test_checkstalled_reports_redis_errors(settings):
    settings.FLOWJOBS = {**settings.FLOWJOBS, "REDIS_URL": "redis://127.0.0.1:9/0"}
    with pytest.raises(CommandError, match="cannot reach Redis"):
        run("checkstalled", "tools", "--once")


def test_schedulers_lists_each_with_schedule_next_run_status_and_origin():
    from flowjobs.engine.schedulers import sync_job_schedulers
    from flowjobs.scheduler_listing import SETTINGS_OWNER

    queue = conf.get_queue("fj-sched")
    assert run("flowjobs", "schedulers", "fj-sched").strip() == "no job schedulers"
    sync_job_schedulers(
        queue, {"nightly": {"pattern": "0 3 * * *", "tz": "Europe/Paris"}}, owner=SETTINGS_OWNER
    )
    queue.upsert_job_scheduler("poll", every=30_000)
    queue.pause_job_scheduler("poll")
    lines = run("flowjobs", "schedulers").splitlines()
    assert lines[0].split() == [
        "queue",
        "scheduler",
        "schedule",
        "next",
        "run",
        "(UTC)",
        "runs",
        "status",
        "from",
    ]
    nightly = next(line for line in lines if "nightly" in line)
    assert "cron 0 3 * * * (Europe/Paris)" in nightly
    assert nightly.split()[-2:] == ["active", "settings"]
    assert " 01:00:00 " in nightly or " 02:00:00 " in nightly  # 03:00 in Paris, in UTC
    poll = next(line for line in lines if "poll" in line)
    assert "every 30 s" in poll and poll.split()[-2:] == ["paused", "code"]
