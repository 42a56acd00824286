"""Prometheus metrics for flowjobs queues (no Django import).

`QueueMetrics` bundles a prometheus-client registry with

- a collector that reads live values from Redis at each scrape (one pipeline and one
  CLIENT LIST for all queues): jobs per state, paused, connected workers, and the
  completed/failed totals and last-minute rates that workers record when they run
  with `metrics_max_data_points` (BullMQ's metrics keys);
- histograms of job run and wait times, fed in-process by the workers passed to
  `observe()` (a web process serving /metrics without workers shows them empty;
  give each worker process its own endpoint, e.g. `start_http_server`).

    metrics = QueueMetrics(["reports", "mail"], connection=url, prefix="bull")
    metrics.observe(worker)
    text = metrics.exposition()          # Prometheus text format (bytes)
"""

from __future__ import annotations

import base64
import time
from collections.abc import Iterable, Iterator
from typing import Any

import redis
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from .engine import Job, Worker
from .engine.connection import Connection, sync_client
from .engine.keys import QueueKeys

__all__ = ["CONTENT_TYPE", "QueueCollector", "QueueMetrics"]

CONTENT_TYPE = CONTENT_TYPE_LATEST

# state label -> (key suffix, Redis type); "waiting" also counts a legacy `paused` list
_STATES: tuple[tuple[str, str, str], ...] = (
    ("waiting", "wait", "list"),
    ("waiting", "paused", "list"),
    ("active", "active", "list"),
    ("prioritized", "prioritized", "zset"),
    ("delayed", "delayed", "zset"),
    ("waiting-children", "waiting-children", "zset"),
    ("completed", "completed", "zset"),
    ("failed", "failed", "zset"),
)
_DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900)


def _worker_names(keys: QueueKeys) -> set[str]:
    """Connection names a worker of this queue uses (BullMQ's base64 form, and the
    plain qualified name of the official Python port)."""
    encoded = base64.b64encode(keys.name.encode()).decode()
    return {f"{keys.prefix}:{encoded}", keys.qualified}


def _is_worker_of(connection_name: str, names: set[str]) -> bool:
    return connection_name in names or any(connection_name.startswith(f"{n}:w:") for n in names)


class QueueCollector(Collector):
    """Reads queue gauges and counters from Redis at every collect()."""

    def __init__(self, queues: Iterable[str], client: redis.Redis, prefix: str = "bull") -> None:
        self.keys = [QueueKeys(prefix, name) for name in queues]
        self.client = client

    def describe(self) -> Iterator[Any]:
        # nothing to describe up front: registering must not reach Redis
        return iter(())

    def collect(self) -> Iterator[Any]:
        jobs = GaugeMetricFamily(
            "flowjobs_queue_jobs", "Jobs in the queue, by state.", labels=["queue", "state"]
        )
        paused = GaugeMetricFamily(
            "flowjobs_queue_paused", "1 when the queue is paused.", labels=["queue"]
        )
        workers = GaugeMetricFamily(
            "flowjobs_queue_workers",
            "Workers connected to the queue (by connection name).",
            labels=["queue"],
        )
        finished = CounterMetricFamily(
            "flowjobs_queue_jobs_finished",
            "Jobs finished since metrics were enabled (workers with metrics_max_data_points).",
            labels=["queue", "state"],
        )
        per_minute = GaugeMetricFamily(
            "flowjobs_queue_jobs_per_minute",
            "Jobs finished in the last complete minute (BullMQ metrics data points).",
            labels=["queue", "state"],
        )
        grouped = GaugeMetricFamily(
            "flowjobs_queue_grouped_jobs_waiting",
            "Jobs waiting in their groups (not in wait; see docs/groups.md).",
            labels=["queue"],
        )
        group_count = GaugeMetricFamily(
            "flowjobs_queue_groups",
            "Groups with jobs waiting, by state (ready, maxed, limited).",
            labels=["queue", "state"],
        )
        up = GaugeMetricFamily("flowjobs_redis_up", "1 when Redis answered this scrape.")
        try:
            pipe = self.client.pipeline(transaction=False)
            for keys in self.keys:
                for _, suffix, kind in _STATES:
                    (pipe.llen if kind == "list" else pipe.zcard)(keys.key(suffix))
                pipe.hexists(keys.meta, "paused")
                for target in ("completed", "failed"):
                    pipe.hget(keys.key(f"metrics:{target}"), "count")
                    pipe.lindex(keys.key(f"metrics:{target}:data"), 0)
                pipe.zrange(keys.key("groups:ready"), 0, -1)
                pipe.smembers(keys.key("groups:maxed"))
                pipe.zrange(keys.key("groups:limited"), 0, -1)
            answers = iter(pipe.execute())
            connection_names = [c.get("name", "") for c in self.client.client_list()]
            per_queue = []
            for keys in self.keys:
                values = [next(answers) for _ in range(len(_STATES) + 5)]
                ready, maxed, limited = next(answers), next(answers), next(answers)
                states = {
                    "ready": [g for g in ready if g != ":plain"],
                    "maxed": sorted(maxed),
                    "limited": list(limited),
                }
                gids = sorted({g for ids in states.values() for g in ids})
                per_queue.append((keys, values, states, gids))
            pipe = self.client.pipeline(transaction=False)
            for keys, _, _, gids in per_queue:
                for gid in gids:
                    pipe.llen(keys.key(f"group:{gid}:wait"))
            group_lengths = iter(pipe.execute())
        except redis.RedisError:
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        for keys, values, states, gids in per_queue:
            answers = iter(values)
            counts: dict[str, int] = {}
            for state, _, _ in _STATES:
                counts[state] = counts.get(state, 0) + int(next(answers))
            for state, value in counts.items():
                jobs.add_metric([keys.name, state], value)
            paused.add_metric([keys.name], 1 if next(answers) else 0)
            grouped.add_metric([keys.name], sum(next(group_lengths) for _ in gids))
            for state, ids in states.items():
                group_count.add_metric([keys.name, state], len(ids))
            for target in ("completed", "failed"):
                total, latest = next(answers), next(answers)
                if total is not None:
                    finished.add_metric([keys.name, target], int(total))
                if latest is not None:
                    per_minute.add_metric([keys.name, target], int(latest))
            names = _worker_names(keys)
            workers.add_metric(
                [keys.name], sum(1 for name in connection_names if _is_worker_of(name, names))
            )
        yield from (up, jobs, paused, workers, finished, per_minute, grouped, group_count)


class QueueMetrics:
    """A registry with the queue collector and the in-process job timing histograms."""

    def __init__(
        self,
        queues: Iterable[str],
        connection: Connection = None,
        prefix: str = "bull",
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.registry = registry or CollectorRegistry()
        self._owns_client = connection is None or isinstance(connection, str)
        self.client = sync_client(connection)
        self.collector = QueueCollector(queues, self.client, prefix)
        self.registry.register(self.collector)
        self.run_seconds = Histogram(
            "flowjobs_job_run_seconds",
            "Time a job spent in its processor (observed by workers in this process).",
            ["queue", "name", "outcome"],
            buckets=_DURATION_BUCKETS,
            registry=self.registry,
        )
        self.wait_seconds = Histogram(
            "flowjobs_job_wait_seconds",
            "Time from a job's timestamp (plus delay) until a worker took it.",
            ["queue", "name"],
            buckets=_DURATION_BUCKETS,
            registry=self.registry,
        )

    def observe(self, worker: Worker) -> Worker:
        """Records run and wait times of the jobs `worker` processes."""
        queue = worker.queue.name

        def started(job: Job) -> None:
            if job.processed_on:
                ready_at = job.timestamp + max(job.delay, 0)
                waited = max(0.0, (job.processed_on - ready_at) / 1000)
                self.wait_seconds.labels(queue, job.name).observe(waited)

        def finished(outcome: str) -> Any:
            def record(job: Job, _: Any) -> None:
                if job.processed_on:
                    ran = max(0.0, time.time() - job.processed_on / 1000)
                    self.run_seconds.labels(queue, job.name, outcome).observe(ran)

            return record

        worker.on("active", started)
        worker.on("completed", finished("completed"))
        worker.on("failed", finished("failed"))
        return worker

    def exposition(self) -> bytes:
        """The registry in Prometheus's text format."""
        return generate_latest(self.registry)

    def close(self) -> None:
        if self._owns_client:
            self.client.close()
