"""Metrics: BullMQ's per-minute counts (get_metrics) and the Prometheus exposition."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from flowjobs.metrics import QueueMetrics
from tests.helpers import wait_for


def samples(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(text.decode()):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def process(job):
    if job.data.get("fail"):
        raise ValueError("nope")
    return job.data


def test_workers_record_per_minute_metrics(queue, make_worker, redis_client, prefix):
    assert queue.get_metrics("completed") == {
        "meta": {"count": 0, "prev_ts": 0, "prev_count": 0},
        "data": [],
        "count": 0,
    }
    queue.add_bulk(
        [{"name": "ok"} for _ in range(3)] + [{"name": "bad", "data": {"fail": True}}] * 2
    )
    make_worker("q", process, metrics_max_data_points=60)
    wait_for(lambda: queue.get_job_counts("completed", "failed") == {"completed": 3, "failed": 2})
    completed = queue.get_metrics("completed")
    assert completed["meta"]["count"] == 3 and completed["meta"]["prev_count"] == 0
    assert completed["data"] == [] and completed["count"] == 0
    assert queue.get_metrics("failed")["meta"]["count"] == 2

    # three minutes later, the next completion closes three one-minute points
    key = f"{prefix}:q:metrics:completed"
    redis_client.hset(key, "prevTS", int(redis_client.hget(key, "prevTS")) - 180_000)
    job = queue.add("ok")
    wait_for(lambda: queue.get_job_state(job.id) == "completed")
    completed = queue.get_metrics("completed")
    assert completed["data"] == [0, 0, 3] and completed["count"] == 3
    assert completed["meta"]["count"] == 4 and completed["meta"]["prev_count"] == 3
    assert queue.get_metrics("completed", 0, 0)["data"] == [0]


def test_prometheus_exposition(queue, make_queue, make_worker, redis_url, prefix):
    other = make_queue("other")
    other.add("idle", delay=60_000)
    other.add_bulk([{"name": "g", "opts": {"group": {"id": g}}} for g in ("a", "a", "b")])
    metrics = QueueMetrics(["q", "other"], connection=redis_url, prefix=prefix)
    try:
        queue.add_bulk(
            [{"name": "ok"} for _ in range(3)] + [{"name": "bad", "data": {"fail": True}}] * 2
        )
        worker = metrics.observe(make_worker("q", process, metrics_max_data_points=60))
        # (counted once the listeners that observe the run times saw the job)
        wait_for(lambda: worker.jobs_processed == 5)
        queue.pause()
        found = samples(metrics.exposition())
    finally:
        metrics.close()

    def value(metric, /, **labels):
        return found[(metric, tuple(sorted(labels.items())))]

    assert value("flowjobs_redis_up") == 1
    assert value("flowjobs_queue_jobs", queue="q", state="completed") == 3
    assert value("flowjobs_queue_jobs", queue="q", state="failed") == 2
    assert value("flowjobs_queue_jobs", queue="q", state="waiting") == 0
    assert value("flowjobs_queue_jobs", queue="other", state="delayed") == 1
    assert value("flowjobs_queue_paused", queue="q") == 1
    assert value("flowjobs_queue_paused", queue="other") == 0
    assert value("flowjobs_queue_grouped_jobs_waiting", queue="other") == 3
    assert value("flowjobs_queue_groups", queue="other", state="ready") == 2
    assert value("flowjobs_queue_grouped_jobs_waiting", queue="q") == 0
    assert value("flowjobs_queue_workers", queue="q") == 1
    assert value("flowjobs_queue_workers", queue="other") == 0
    assert value("flowjobs_queue_jobs_finished_total", queue="q", state="completed") == 3
    assert value("flowjobs_queue_jobs_finished_total", queue="q", state="failed") == 2
    assert value("flowjobs_job_run_seconds_count", queue="q", name="ok", outcome="completed") == 3
    assert value("flowjobs_job_run_seconds_count", queue="q", name="bad", outcome="failed") == 2
    assert value("flowjobs_job_wait_seconds_count", queue="q", name="ok") == 3
    assert worker.jobs_processed == 5


def test_exposition_reports_redis_down(redis_url, prefix):
    metrics = QueueMetrics(["q"], connection="redis://127.0.0.1:9/0", prefix=prefix)
    found = samples(metrics.exposition())
    metrics.close()
    assert found[("flowjobs_redis_up", ())] == 0


def test_foreign_values_in_the_metrics_hash_do_not_stop_finishes(
    queue, make_worker, redis_client, prefix
):
    """A count or a time in the metrics hash that is not a number (written by another
    client) made every finish's script fail, and the job stay active: the count restarts
    at 1 and the minute starts anew."""
    key = f"{prefix}:q:metrics:completed"
    redis_client.hset(key, mapping={"count": "many", "prevTS": "yesterday", "prevCount": "?"})
    queue.add_bulk([{"name": "ok"} for _ in range(2)])
    worker = make_worker("q", process, metrics_max_data_points=60, autorun=False)
    worker.start()
    wait_for(lambda: queue.get_job_counts("completed")["completed"] == 2)
    fields = redis_client.hgetall(key)
    assert fields["count"] == "2" and fields["prevTS"].isdigit()
