"""Process isolation: processors in child processes survive crashes, hangs and timeouts."""

from __future__ import annotations

import os

import pytest

from flowjobs.engine import FlowJobsError, Worker
from tests.engine import isolated_processors
from tests.helpers import wait_for

PATH = "tests.engine.isolated_processors"


def state(queue, job_id):
    return queue.get_job_state(job_id)


def test_jobs_run_in_child_processes_and_results_cross_as_json(queue, make_worker):
    jobs = queue.add_bulk([{"name": "d", "data": {"n": i}} for i in range(4)])
    make_worker("q", f"{PATH}:double", isolation="process", concurrency=2)
    for job in jobs:
        wait_for(lambda job=job: state(queue, job.id) == "completed", timeout=15)
    results = [queue.get_job(job.id) for job in jobs]
    assert [r.returnvalue["value"] for r in results] == [0, 2, 4, 6]
    pids = {r.returnvalue["pid"] for r in results}
    assert os.getpid() not in pids and 1 <= len(pids) <= 2
    assert results[0].progress == 50


def test_a_crashing_processor_fails_its_job_and_the_worker_goes_on(queue, make_worker):
    segfault = queue.add("crash", {"how": "segv"})
    exits = queue.add("crash", {"how": "exit"})
    make_worker("q", isolated_processors.crash, isolation="process")
    wait_for(lambda: state(queue, exits.id) == "failed", timeout=15)
    assert queue.get_job(segfault.id).failed_reason == "processor process died (exit code -11)"
    assert queue.get_job(exits.id).failed_reason == "processor process died (exit code 3)"
    after = queue.add("crash-free", {"how": "exit"})
    wait_for(lambda: state(queue, after.id) == "failed", timeout=15)


def test_a_timeout_kills_an_overrunning_child(queue, make_worker):
    slow = queue.add("spin", {"seconds": 30}, timeout=300)
    quick = queue.add("spin", {"seconds": 0})
    make_worker("q", f"{PATH}:spin", isolation="process")
    wait_for(lambda: state(queue, quick.id) == "completed", timeout=15)
    failed = queue.get_job(slow.id)
    assert failed.failed_reason == "processor timed out after 300 ms (its process was killed)"


def test_processor_errors_keep_their_message_signal_and_traceback(queue, make_worker):
    plain = queue.add("f", {}, attempts=2)
    final = queue.add("f", {"unrecoverable": True}, attempts=5)
    make_worker("q", f"{PATH}:fail", isolation="process")
    wait_for(lambda: state(queue, plain.id) == "failed", timeout=15)
    wait_for(lambda: state(queue, final.id) == "failed", timeout=15)
    plain_job, final_job = queue.get_job(plain.id), queue.get_job(final.id)
    assert plain_job.failed_reason == "'missing thing'" and plain_job.attempts_made == 2
    assert (
        "KeyError" in plain_job.stacktrace[-1] and "isolated_processors" in plain_job.stacktrace[-1]
    )
    assert final_job.failed_reason == "no way" and final_job.attempts_made == 1


def test_async_processors_and_non_json_results(queue, make_worker):
    good = queue.add("a", {"n": 4})
    make_worker("q", f"{PATH}:async_double", isolation="process")
    wait_for(lambda: state(queue, good.id) == "completed", timeout=15)
    assert queue.get_job(good.id).returnvalue == 8
    assert queue.get_job(good.id).progress == 75


def test_a_result_that_is_not_json_fails_the_job(queue, make_worker):
    job = queue.add("n")
    make_worker("q", f"{PATH}:not_json", isolation="process")
    wait_for(lambda: state(queue, job.id) == "failed", timeout=15)
    assert "JSON" in queue.get_job(job.id).failed_reason


def test_processors_must_be_importable(redis_url, prefix):
    with pytest.raises(FlowJobsError, match="importable"):
        Worker("q", lambda job: None, connection=redis_url, prefix=prefix, isolation="process")
    with pytest.raises(FlowJobsError, match="cannot import"):
        Worker("q", "tests.engine.nowhere:fn", connection=redis_url, prefix=prefix)
    with pytest.raises(FlowJobsError, match="isolation"):
        Worker("q", f"{PATH}:double", connection=redis_url, prefix=prefix, isolation="fork")


def test_each_child_runs_the_initializer_first(queue, make_worker):
    job = queue.add("i")
    make_worker(
        "q",
        f"{PATH}:initialized",
        isolation="process",
        process_initializer=f"{PATH}:initialize",
    )
    wait_for(lambda: state(queue, job.id) == "completed", timeout=15)
    assert queue.get_job(job.id).returnvalue is True
