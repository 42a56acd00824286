"""The worker's per-job log lines: failures loud (retry vs final, class, traceback),
everything else at DEBUG only."""

from __future__ import annotations

import logging

import pytest

from flowjobs.engine import Backoff
from tests.helpers import wait_for


class CardDeclined(Exception):
    pass


def declines(job):
    raise CardDeclined(f"card of order {job.data['order']} declined")


def _records(caplog, level: int) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "flowjobs.worker" and r.levelno == level]


def test_a_retry_is_a_warning_with_its_delay_and_the_final_failure_an_error(
    queue, make_worker, caplog
):
    caplog.set_level(logging.INFO, logger="flowjobs.worker")
    job = queue.add("charge", {"order": 7}, attempts=2, backoff=Backoff.fixed(40))
    make_worker("q", declines)
    wait_for(lambda: queue.get_job_state(job.id) == "failed", message="never failed")
    wait_for(lambda: _records(caplog, logging.ERROR), message="no ERROR line")

    [retry] = _records(caplog, logging.WARNING)
    message = retry.getMessage()
    assert f'job {job.id} "charge" of queue q failed (attempt 1 of 2)' in message
    assert "retrying in 40 ms: CardDeclined: card of order 7 declined" in message
    assert retry.exc_info and retry.exc_info[0] is CardDeclined
    assert "in declines" in logging.Formatter().format(retry)  # the traceback's user frame

    [final] = _records(caplog, logging.ERROR)
    message = final.getMessage()
    assert f'job {job.id} "charge" of queue q failed for good (attempt 2 of 2)' in message
    assert message.endswith("CardDeclined: card of order 7 declined")
    assert final.exc_info and final.exc_info[0] is CardDeclined


@pytest.mark.parametrize("processor", [lambda job: job.data, declines])
def test_no_info_line_per_job_by_default_and_debug_lines_on_request(
    queue, make_worker, caplog, processor
):
    caplog.set_level(logging.INFO, logger="flowjobs.worker")
    jobs = queue.add_bulk([{"name": "n", "data": {"order": i}} for i in range(20)])
    worker = make_worker("q", processor, concurrency=5)
    wait_for(lambda: worker.jobs_processed == 20, message="jobs not processed")
    assert _records(caplog, logging.INFO) == []
    assert _records(caplog, logging.DEBUG) == []

    caplog.set_level(logging.DEBUG, logger="flowjobs.worker")
    more = queue.add("n", {"order": 99})
    wait_for(lambda: worker.jobs_processed == 21, message="job not processed")
    described = f'job {more.id} "n" of queue q'
    # a job counts as processed once Redis recorded it; its line follows on the worker's
    # thread, so the test waits for the line
    if processor is declines:
        wait_for(lambda: len(_records(caplog, logging.ERROR)) == len(jobs) + 1)
    else:
        wait_for(
            lambda: any(
                r.getMessage().startswith(f"{described} completed after ")
                for r in _records(caplog, logging.DEBUG)
            )
        )
    lines = [r.getMessage() for r in _records(caplog, logging.DEBUG)]
    assert f"{described} started" in lines
