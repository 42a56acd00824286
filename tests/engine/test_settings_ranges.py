"""Every Worker and Queue setting is range-checked: a nonsense value is a named error
before anything starts or is written."""

from __future__ import annotations

import pytest

from flowjobs.engine import InvalidWorkerOptions, Queue, QueueEvents, Worker
from flowjobs.engine.errors import (
    FlowJobsError,
    InvalidArgument,
    InvalidConnection,
    InvalidJobOptions,
)

BAD_WORKER_SETTINGS = [
    {"lock_duration": 0},
    {"lock_duration": -5},
    {"lock_duration": float("nan")},
    {"lock_renew_time": 0},
    {"lock_duration": 1000, "lock_renew_time": 1000},
    {"stalled_interval": 0},
    {"stalled_interval": -1},
    {"concurrency": 10**6},
    {"concurrency": 0},
    {"concurrency": 2.5},
    {"limiter": {"max": 0, "duration": 1000}},
    {"limiter": {"max": 5, "duration": 0}},
    {"limiter": {"max": 5}},
    {"limiter": {"max": 5, "duration": 1000, "burst": 1}},
    {"drain_delay": -1},
    {"drain_delay": 0},
    {"drain_delay": float("inf")},
    {"max_stalled_count": -1},
    {"group_concurrency": 0},
    {"group_limiter": {"max": 0, "duration": 10}},
    {"job_timeout_ms": 0},
    {"metrics_max_data_points": -3},
    {"remove_on_complete": {"count": [1]}},
    {"remove_on_fail": "yes"},
    {"name": "two words"},
    {"isolation": "fork"},
]


@pytest.mark.parametrize("settings", BAD_WORKER_SETTINGS, ids=repr)
def test_a_worker_setting_out_of_range_is_a_named_error(redis_url, prefix, settings):
    with pytest.raises(InvalidWorkerOptions) as raised:
        Worker("q", lambda job: None, connection=redis_url, prefix=prefix, **settings)
    assert list(settings)[-1] in str(raised.value)


def test_sane_settings_are_accepted_and_typed(redis_url, prefix):
    worker = Worker(
        "q",
        lambda job: None,
        connection=redis_url,
        prefix=prefix,
        autorun=False,
        lock_duration=50.0,
        drain_delay=1,
        limiter={"max": 1, "duration": 1},
    )
    assert (worker.lock_duration, worker.lock_renew_time, worker.drain_delay) == (50, 25, 1.0)
    worker.queue.close()


def test_a_queue_checks_its_connection_and_default_job_options(redis_url, prefix):
    with pytest.raises(InvalidConnection, match="int"):
        Queue("q", connection=42)
    with pytest.raises(InvalidJobOptions, match="attempts"):
        Queue("q", connection=redis_url, prefix=prefix, default_job_options={"attempts": -1})
    with pytest.raises(InvalidJobOptions, match="unknown option"):
        Queue("q", connection=redis_url, prefix=prefix, default_job_options={"bogus": 1})
    assert issubclass(InvalidConnection, FlowJobsError)


@pytest.mark.parametrize(
    "settings", [{"blocking_timeout_ms": -1}, {"blocking_timeout_ms": "x"}, {"last_event_id": 5}]
)
def test_queue_events_check_their_settings(redis_url, prefix, settings):
    with pytest.raises(InvalidArgument, match=next(iter(settings))):
        QueueEvents("q", connection=redis_url, prefix=prefix, autorun=False, **settings)
