"""runworker --pool=process, job schedulers declared in settings, METRICS_* settings."""

from __future__ import annotations

import json
import os

import pytest

from flowjobs import conf
from flowjobs.checks import check_settings

pytestmark = pytest.mark.django_db(transaction=True)


def test_process_pool_runs_jobs_in_children_and_survives_a_crash(start_worker):
    queue = conf.get_queue("fj-isolated")
    crash = queue.add("boom", {"crash": True})
    fine = queue.add("fine", {})
    worker = start_worker("fj-isolated", "--burst", "--pool", "process")
    assert worker.wait(60) == 0, worker.output()
    crashed = queue.get_job(crash.id)
    assert queue.get_job_state(crash.id) == "failed"
    assert "processor process died (exit code 3)" in crashed.failed_reason
    result = queue.get_job(fine.id).returnvalue
    assert result["notes"] == 0  # Django is set up in the child: the ORM works there
    assert result["pid"] not in (os.getpid(), worker.pid)


def test_job_timeout_stops_an_over_running_isolated_job(start_worker, prefix):
    queue = conf.get_queue("fj-slow")
    job = queue.add("hang", {})
    worker = start_worker("fj-slow", "--burst", "--pool", "process", "--job-timeout", "500")
    assert worker.wait(60) == 0, worker.output()
    assert queue.get_job_state(job.id) == "failed"
    assert "500" in queue.get_job(job.id).failed_reason


def test_schedulers_declared_in_settings_are_synced_at_worker_start(start_worker):
    declarations = {
        "nightly": {
            "pattern": "0 3 * * *",
            "tz": "Europe/Paris",
            "template": {"name": "report", "data": {"kind": "nightly"}},
        },
    }
    env = {"FLOWJOBS_QUEUES": json.dumps({"fj-echo": {"SCHEDULERS": declarations}})}
    for _ in range(2):  # a second start leaves the declared scheduler alone
        worker = start_worker("fj-echo", "--burst", env=env)
        assert worker.wait() == 0, worker.output()
    queue = conf.get_queue("fj-echo")
    scheduler = queue.get_job_scheduler("nightly")
    assert scheduler is not None and scheduler.pattern == "0 3 * * *"
    assert scheduler.tz == "Europe/Paris"
    assert queue.get_job_counts("delayed")["delayed"] == 1


def test_a_scheduler_dropped_from_settings_is_removed_at_the_next_start(start_worker):
    queue = conf.get_queue("fj-echo")
    queue.upsert_job_scheduler("made-in-code", every=3_600_000)
    declared = {"hourly": {"every": 3_600_000}, "nightly": {"pattern": "0 3 * * *"}}
    env = {"FLOWJOBS_QUEUES": json.dumps({"fj-echo": {"SCHEDULERS": declared}})}
    worker = start_worker("fj-echo", "--burst", env=env)
    assert worker.wait() == 0, worker.output()
    assert {s.id for s in queue.get_job_schedulers()} == {"made-in-code", "hourly", "nightly"}

    del declared["nightly"]
    env = {"FLOWJOBS_QUEUES": json.dumps({"fj-echo": {"SCHEDULERS": declared}})}
    worker = start_worker("fj-echo", "--burst", env=env)
    assert worker.wait() == 0, worker.output()
    assert {s.id for s in queue.get_job_schedulers()} == {"made-in-code", "hourly"}
    assert 'job scheduler "nightly" of queue fj-echo removed' in worker.output()

    worker = start_worker("fj-echo", "--burst")  # no SCHEDULERS at all any more
    assert worker.wait() == 0, worker.output()
    assert [s.id for s in queue.get_job_schedulers()] == ["made-in-code"]
    assert 'job scheduler "hourly" of queue fj-echo removed' in worker.output()


def test_bad_scheduler_declaration_is_a_check_error(settings):
    settings.FLOWJOBS = {
        **settings.FLOWJOBS,
        "QUEUES": {"reports": {"SCHEDULERS": {"x": {"pattern": "not cron"}}}},
    }
    messages = check_settings()
    assert [m.id for m in messages] == ["flowjobs.E009"]
    assert "QUEUES" in messages[0].msg and "x" in messages[0].msg


def test_metrics_settings_are_accepted(settings):
    settings.FLOWJOBS = {**settings.FLOWJOBS, "METRICS_TOKEN": "t0ken"}
    assert check_settings() == []


def test_runworker_records_per_minute_metrics_unless_turned_off(start_worker):
    queue = conf.get_queue("fj-echo")
    queue.add("one", {"n": 1})
    worker = start_worker("fj-echo", "--burst")
    assert worker.wait() == 0, worker.output()
    assert queue.get_metrics("completed")["meta"]["count"] == 1  # on by default (60 minutes)

    queue.add("two", {"n": 2})
    worker = start_worker("fj-echo", "--burst", env={"FLOWJOBS_METRICS_MINUTES": "0"})
    assert worker.wait() == 0, worker.output()
    assert queue.get_job_counts("completed")["completed"] == 2
    assert queue.get_metrics("completed")["meta"]["count"] == 1  # off: not counted

    worker = start_worker("fj-echo", "--burst", env={"FLOWJOBS_METRICS_MINUTES": "-3"})
    assert worker.wait() != 0
    assert "METRICS_MINUTES must be an integer >= 0" in worker.output()
