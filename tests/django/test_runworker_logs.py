"""runworker's per-job log lines as an operator reads them, for both pools."""

from __future__ import annotations

import re

import pytest

from flowjobs import conf

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.mark.parametrize("pool", ["thread", "process"])
def test_failures_are_logged_with_class_traceback_retry_and_final_failure(start_worker, pool):
    queue = conf.get_queue("fj-isolated")
    job = queue.add("charge", {"fail": "card declined"}, attempts=2, backoff=30)
    fine = queue.add("fine", {})

    worker = start_worker("fj-isolated", "--burst", "--pool", pool)
    assert worker.wait(60) == 0, worker.output()
    output = worker.output()

    described = f'job {job.id} "charge" of queue fj-isolated'
    assert re.search(
        rf"{described} failed \(attempt 1 of 2\) after \d+ ms, "
        r"retrying in 30 ms: ValueError: card declined\nTraceback",
        output,
    ), output
    assert re.search(
        rf"{described} failed for good \(attempt 2 of 2\) after "
        r"\d+ ms: ValueError: card declined\nTraceback",
        output,
    ), output
    assert 'raise ValueError(job.data["fail"])' in output  # the processor's own frame
    assert f"job {fine.id} " not in output  # a completed job: DEBUG only


def test_verbosity_2_logs_every_job(start_worker):
    job = conf.get_queue("fj-echo").add("hello", {"n": 1})
    worker = start_worker("fj-echo", "--burst", "-v", "2")
    assert worker.wait() == 0, worker.output()
    output = worker.output()
    # (the test settings configure the flowjobs logger at INFO: -v 2 still means DEBUG)
    assert f'job {job.id} "hello" of queue fj-echo started' in output
    assert re.search(rf'job {job.id} "hello" of queue fj-echo completed after \d+ ms', output)
