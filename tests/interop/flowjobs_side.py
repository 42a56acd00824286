"""The flowjobs side of the interop tests, with the same interface as the Node side.

`FlowjobsHarness` mirrors `NodeHarness`: `.producer.<command>(...)` answers the
commands of producer.cjs with the same JSON shapes (BullMQ's camelCase job
view), `.worker(spec)` runs in-process flowjobs Workers acting like worker.cjs
and reporting the same lines, `.events(spec)` records a flowjobs QueueEvents
like events.cjs, and `.worker_process(spec)` runs a flowjobs worker in a child
process that a test may SIGKILL. A test can then be written once and run in
both directions.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from typing import Any

from flowjobs.engine import (
    Flow,
    FlowProducer,
    Job,
    JobNode,
    Queue,
    QueueEvents,
    QueueEventsProducer,
    Worker,
)
from flowjobs.engine.schedulers import JobScheduler

from .behaviours import make_processor
from .node import INTEROP_DIR, JsonLineProcess, LineLog

# BullMQ's option names (what Node callers write) -> flowjobs keyword arguments.
OPTION_NAMES = {
    "jobId": "job_id",
    "delay": "delay",
    "priority": "priority",
    "lifo": "lifo",
    "attempts": "attempts",
    "backoff": "backoff",
    "removeOnComplete": "remove_on_complete",
    "removeOnFail": "remove_on_fail",
    "keepLogs": "keep_logs",
    "stackTraceLimit": "stacktrace_limit",
    "timestamp": "timestamp",
    "parent": "parent",
    "failParentOnFailure": "fail_parent_on_failure",
    "continueParentOnFailure": "continue_parent_on_failure",
    "ignoreDependencyOnFailure": "ignore_dependency_on_failure",
    "removeDependencyOnFailure": "remove_dependency_on_failure",
    "deduplication": "deduplication",
}
# Node's Job.fromJSON turns the stored short keys back into option names; the
# flowjobs Job keeps the stored dict, so the JSON view decodes it the same way.
STORED_TO_OPTION = {
    "fpof": "failParentOnFailure",
    "cpof": "continueParentOnFailure",
    "idof": "ignoreDependencyOnFailure",
    "rdof": "removeDependencyOnFailure",
    "kl": "keepLogs",
    "de": "deduplication",
    "tm": "telemetryMetadata",
    "omc": "omitContext",
}


# BullMQ's deduplication keys -> flowjobs' (the rest are spelled the same).
DEDUP_NAMES = {"keepLastIfActive": "keep_last_if_active"}


def snake_options(opts: dict[str, Any] | None) -> dict[str, Any]:
    unknown = set(opts or {}) - set(OPTION_NAMES)
    if unknown:
        raise KeyError(f"no flowjobs mapping for options {sorted(unknown)}")
    options = {OPTION_NAMES[key]: value for key, value in (opts or {}).items()}
    if isinstance(options.get("deduplication"), dict):
        options["deduplication"] = {
            DEDUP_NAMES.get(key, key): value for key, value in options["deduplication"].items()
        }
    return options


def decoded_opts(stored: dict[str, Any]) -> dict[str, Any]:
    return {STORED_TO_OPTION.get(key, key): value for key, value in stored.items()}


def job_to_json(job: Job | None) -> dict[str, Any] | None:
    """The same view of a job as lib/common.cjs jobToJson."""
    if job is None:
        return None
    return {
        "id": job.id,
        "name": job.name,
        "queueName": job.queue_name,
        "queueQualifiedName": job.queue.keys.qualified,
        "data": job.data,
        "opts": decoded_opts(job.opts),
        "timestamp": job.timestamp,
        "delay": job.delay,
        "priority": job.priority,
        "attemptsMade": job.attempts_made,
        "attemptsStarted": job.attempts_started,
        "stalledCounter": job.stalled_counter,
        "processedOn": job.processed_on,
        "finishedOn": job.finished_on,
        "returnvalue": job.returnvalue,
        "failedReason": job.failed_reason,
        "deferredFailure": job.deferred_failure,
        "stacktrace": job.stacktrace,
        "progress": job.progress,
        "parentKey": job.parent_key,
        "parent": job.parent,
        "repeatJobKey": job.repeat_job_key,
        "deduplicationId": job.dedup_id,
        "processedBy": job.processed_by,
    }


def scheduler_to_json(scheduler: JobScheduler | None) -> dict[str, Any] | None:
    """The same view of a scheduler as Node's Queue.getJobScheduler (absent fields left out)."""
    if scheduler is None:
        return None
    view: dict[str, Any] = {
        "key": scheduler.id,
        "name": scheduler.name,
        "next": scheduler.next_millis,
    }
    for key, value in (
        ("iterationCount", scheduler.iteration_count or None),
        ("limit", scheduler.limit),
        ("startDate", scheduler.start_date),
        ("endDate", scheduler.end_date),
        ("tz", scheduler.tz),
        ("pattern", scheduler.pattern),
        ("every", scheduler.every),
        ("offset", scheduler.offset),
    ):
        if value is not None:
            view[key] = value
    template: dict[str, Any] = {}
    if scheduler.template_data is not None:
        template["data"] = scheduler.template_data
    if scheduler.template_opts:
        template["opts"] = decoded_opts(scheduler.template_opts)
    if template:
        view["template"] = template
    return view


def node_to_json(node: JobNode | None) -> dict[str, Any] | None:
    if node is None:
        return None
    return {"job": job_to_json(node.job), "children": [node_to_json(c) for c in node.children]}


def to_flow(node: dict[str, Any]) -> Flow:
    """A producer.cjs flow node ({name, queueName, data, opts, children}) as a Flow."""
    return Flow(
        node["name"],
        node["queueName"],
        node.get("data"),
        children=[to_flow(child) for child in node.get("children") or []],
        prefix=node.get("prefix"),
        opts=snake_options(node.get("opts")),
    )


class FlowjobsProducer:
    """producer.cjs's commands, answered by the flowjobs engine in this process."""

    def __init__(self, redis_url: str, prefix: str) -> None:
        self.redis_url = redis_url
        self.prefix = prefix
        self._queues: dict[str, Queue] = {}
        self._flows: FlowProducer | None = None

    def queue(self, name: str) -> Queue:
        if name not in self._queues:
            self._queues[name] = Queue(name, connection=self.redis_url, prefix=self.prefix)
        return self._queues[name]

    @property
    def flows(self) -> FlowProducer:
        if self._flows is None:
            self._flows = FlowProducer(connection=self.redis_url, prefix=self.prefix)
        return self._flows

    def call(self, cmd: str, **c: Any) -> Any:
        handlers: dict[str, Callable[[dict[str, Any]], Any]] = {
            "ping": lambda c: "pong",
            "add": self._add,
            "addBulk": self._add_bulk,
            "flow": lambda c: node_to_json(self.flows.add(to_flow(c["flow"]))),
            "getFlow": self._get_flow,
            "pause": lambda c: self.queue(c["queue"]).pause() or True,
            "resume": lambda c: self.queue(c["queue"]).resume() or True,
            "isPaused": lambda c: self.queue(c["queue"]).is_paused(),
            "getJobCounts": lambda c: self.queue(c["queue"]).get_job_counts(*c.get("types", [])),
            "getJobs": self._get_jobs,
            "getJob": lambda c: job_to_json(self.queue(c["queue"]).get_job(c["id"])),
            "getJobState": lambda c: self.queue(c["queue"]).get_job_state(c["id"]),
            "getChildrenValues": lambda c: self._job(c).get_children_values(),
            "getIgnoredChildrenFailures": lambda c: self._job(c).get_ignored_children_failures(),
            "getDependenciesCount": lambda c: self._job(c).get_dependencies_count(),
            "getJobLogs": self._get_job_logs,
            "remove": lambda c: self._job(c).remove(c.get("removeChildren", True)) or 1,
            "retry": lambda c: self._job(c).retry(c.get("state", "failed")) or True,
            "promote": lambda c: self._job(c).promote() or True,
            "updateProgress": lambda c: self._job(c).update_progress(c["progress"]) or True,
            "changePriority": lambda c: (
                self._job(c).change_priority(c["priority"], c.get("lifo", False)) or True
            ),
            "changeDelay": lambda c: self._job(c).change_delay(c["delay"]) or True,
            "updateData": lambda c: self._job(c).update_data(c["data"]) or True,
            "log": lambda c: self._job(c).log(c["line"]),
            "getMeta": lambda c: self.queue(c["queue"]).get_meta(),
            "setGlobalConcurrency": lambda c: (
                self.queue(c["queue"]).set_global_concurrency(c["concurrency"]) or True
            ),
            "removeGlobalConcurrency": lambda c: self.queue(c["queue"]).remove_global_concurrency(),
            "setGlobalRateLimit": lambda c: (
                self.queue(c["queue"]).set_global_rate_limit(c["max"], c["duration"]) or True
            ),
            "removeGlobalRateLimit": lambda c: self.queue(c["queue"]).remove_global_rate_limit(),
            "rateLimit": lambda c: self.queue(c["queue"]).rate_limit(c["ms"]) or True,
            "getRateLimitTtl": lambda c: self.queue(c["queue"]).get_rate_limit_ttl(
                c.get("maxJobs")
            ),
            "removeRateLimitKey": lambda c: self.queue(c["queue"]).remove_rate_limit_key(),
            "getCountsPerPriority": lambda c: {
                str(priority): count
                for priority, count in self.queue(c["queue"])
                .get_counts_per_priority(c["priorities"])
                .items()
            },
            "publishEvent": self._publish_event,
            "flowAfterClose": self._flow_after_close,
            "manualFinish": self._manual_finish,
            "drain": lambda c: self.queue(c["queue"]).drain(c.get("delayed", False)) is not None,
            "getWorkers": lambda c: sorted(w["name"] for w in self.queue(c["queue"]).get_workers()),
            "upsertJobScheduler": self._upsert_job_scheduler,
            "removeJobScheduler": lambda c: self.queue(c["queue"]).remove_job_scheduler(c["id"]),
            "getJobSchedulers": lambda c: [
                scheduler_to_json(s)
                for s in self.queue(c["queue"]).get_job_schedulers(
                    c.get("start", 0), c.get("end", -1), c.get("asc", False)
                )
            ],
            "getJobScheduler": lambda c: scheduler_to_json(
                self.queue(c["queue"]).get_job_scheduler(c["id"])
            ),
            "getJobSchedulersCount": lambda c: self.queue(c["queue"]).get_job_schedulers_count(),
            "getDeduplicationJobId": lambda c: self.queue(c["queue"]).get_deduplication_job_id(
                c["dedupId"]
            ),
            "removeDeduplicationKey": lambda c: int(
                self.queue(c["queue"]).remove_deduplication_key(c["dedupId"])
            ),
        }
        if cmd not in handlers:
            raise KeyError(f"unknown command {cmd}")
        return handlers[cmd](c)

    def __getattr__(self, cmd: str) -> Callable[..., Any]:
        # producer.add(queue="q", name="n") == call("add", queue="q", name="n")
        if cmd.startswith("_"):
            raise AttributeError(cmd)
        return lambda **fields: self.call(cmd, **fields)

    def _job(self, c: dict[str, Any]) -> Job:
        job = self.queue(c["queue"]).get_job(c["id"])
        if job is None:
            raise LookupError(f"job {c['id']} not found in queue {c['queue']}")
        return job

    def _add(self, c: dict[str, Any]) -> Any:
        data = c.get("data")
        job = self.queue(c["queue"]).add(
            c["name"], {} if data is None else data, **snake_options(c.get("opts"))
        )
        return job_to_json(job)

    def _upsert_job_scheduler(self, c: dict[str, Any]) -> Any:
        repeat = dict(c.get("repeat") or {})
        names = {"startDate": "start_date", "endDate": "end_date"}
        known = {"every", "pattern", "tz", "limit", "count", "immediately", "offset", *names}
        if set(repeat) - known:
            raise KeyError(f"no flowjobs mapping for repeat options {sorted(set(repeat) - known)}")
        template = c.get("template") or {}
        job = self.queue(c["queue"]).upsert_job_scheduler(
            c["id"],
            **{names.get(key, key): value for key, value in repeat.items()},
            template={
                "name": template.get("name"),
                "data": template.get("data"),
                "opts": snake_options(template.get("opts")),
            },
        )
        return job_to_json(job)

    def _publish_event(self, c: dict[str, Any]) -> Any:
        producer = QueueEventsProducer(c["queue"], connection=self.redis_url, prefix=self.prefix)
        try:
            producer.publish_event(c["eventName"], c.get("fields"), c.get("maxEvents", 1000))
        finally:
            producer.close()
        return True

    def _manual_finish(self, c: dict[str, Any]) -> Any:
        worker = Worker(c["queue"], None, connection=self.redis_url, prefix=self.prefix)
        active: list[list[Any]] = []
        worker.on("active", lambda job: active.append([job.id, "waiting"]))
        try:
            job = worker.get_next_job("token-1", block=False)
            assert job is not None, f"no job to take in {c['queue']}"
            if c["outcome"] == "completed":
                following = job.move_to_completed(
                    c.get("value"), "token-1", c.get("fetchNext", False)
                )
            else:
                error = RuntimeError(c.get("value"))
                following = job.move_to_failed(error, "token-1", c.get("fetchNext", False))
            return {
                "id": job.id,
                "attemptsMade": job.attempts_made,
                "returnvalue": job.returnvalue,
                "failedReason": job.failed_reason,
                "finishedOn": job.finished_on,
                "active": active,
                "next": following.id if following else None,
            }
        finally:
            worker.close()

    def _flow_after_close(self, c: dict[str, Any]) -> Any:
        producer = FlowProducer(connection=self.redis_url, prefix=self.prefix)
        producer.close()
        return node_to_json(producer.add(to_flow(c["flow"])))

    def _add_bulk(self, c: dict[str, Any]) -> Any:
        items = [
            {"name": j["name"], "data": j.get("data", {}), "opts": snake_options(j.get("opts"))}
            for j in c["jobs"]
        ]
        return [job_to_json(job) for job in self.queue(c["queue"]).add_bulk(items)]

    def _get_flow(self, c: dict[str, Any]) -> Any:
        node = self.flows.get_flow(
            c["queue"], c["id"], depth=c.get("depth", 10), max_children=c.get("maxChildren", 100)
        )
        return node_to_json(node)

    def _get_jobs(self, c: dict[str, Any]) -> Any:
        queue = self.queue(c["queue"])
        window = {"start": c.get("start", 0), "end": c.get("end", -1), "asc": c.get("asc", False)}
        jobs = queue.get_jobs(c["types"], **window) if c.get("types") else queue.get_jobs(**window)
        return [job_to_json(job) for job in jobs]

    def _get_job_logs(self, c: dict[str, Any]) -> Any:
        logs, count = self.queue(c["queue"]).get_job_logs(c["id"])
        return {"logs": logs, "count": count}

    def close(self) -> None:
        for queue in self._queues.values():
            queue.close()
        if self._flows is not None:
            self._flows.close()


class FlowjobsWorker(LineLog):
    """In-process flowjobs Workers (one per queue) reporting worker.cjs's lines."""

    def __init__(self, redis_url: str, prefix: str, spec: dict[str, Any]) -> None:
        super().__init__(f"flowjobs worker {spec}")
        self.spec = spec
        self.stop_event = threading.Event()
        self.workers: list[Worker] = []
        self._outcomes = 0
        self._count_lock = threading.Lock()
        processor = make_processor(spec.get("behaviours", {}), self.append, self.stop_event)
        names = spec.get("queues") or [spec["queue"]]
        for name in names:
            worker = Worker(
                name,
                processor,
                connection=redis_url,
                prefix=prefix,
                autorun=False,
                drain_delay=spec.get("drainDelay", 1),
                **worker_options(spec),
            )
            worker.on("completed", self._completed_listener(name))
            worker.on("failed", self._failed_listener(name, worker))
            worker.on("stalled", lambda job_id, q=name: self.append(stalled_line(q, job_id)))
            worker.on(
                "error",
                lambda error, q=name: self.append(
                    {"event": "error", "queue": q, "error": {"message": str(error)}}
                ),
            )
            self.workers.append(worker)
        for worker in self.workers:
            worker.start()
        self.append({"event": "ready", "queues": names})

    def _count(self) -> None:
        with self._count_lock:
            self._outcomes += 1
            done = self._outcomes == self.spec.get("doneAfter")
        if done:
            self.append({"event": "done", "count": self._outcomes})

    def _completed_listener(self, queue: str) -> Callable[[Job, Any], None]:
        def listener(job: Job, result: Any) -> None:
            self.append(
                {
                    "event": "completed",
                    "queue": queue,
                    "id": job.id,
                    "name": job.name,
                    "returnvalue": result,
                    "attemptsMade": job.attempts_made,  # updated before listeners run
                }
            )
            self._count()

        return listener

    def _failed_listener(self, queue: str, worker: Worker) -> Callable[[Job, Any], None]:
        def listener(job: Job, error: Any) -> None:
            final = bool(job.finished_on)  # as worker.cjs: set only by a final failure
            self.append(
                {
                    "event": "failed",
                    "queue": queue,
                    "id": job.id,
                    "name": job.name,
                    "failedReason": str(error),
                    "errorName": type(error).__name__,
                    "attemptsMade": job.attempts_made,
                    "final": final,
                }
            )
            if final:
                self._count()

        return listener

    def close(self) -> None:
        self.stop_event.set()
        for worker in self.workers:
            worker.close(force=True, timeout=10)
        self.append({"event": "closed"})
        self.close_log()


def stalled_line(queue: str, job_id: str) -> dict[str, Any]:
    return {"event": "stalled", "queue": queue, "id": job_id}


def worker_options(spec: dict[str, Any]) -> dict[str, Any]:
    """worker.cjs spec keys -> flowjobs Worker keyword arguments."""
    names = {
        "concurrency": "concurrency",
        "lockDuration": "lock_duration",
        "stalledInterval": "stalled_interval",
        "maxStalledCount": "max_stalled_count",
        "skipStalledCheck": "skip_stalled_check",
        "skipLockRenewal": "skip_lock_renewal",
        "name": "name",
        "removeOnComplete": "remove_on_complete",
        "removeOnFail": "remove_on_fail",
        "limiter": "limiter",
    }
    options = {names[key]: value for key, value in spec.items() if key in names}
    if "customBackoffMs" in spec:
        delay = spec["customBackoffMs"]
        options["backoff_strategies"] = {"custom": lambda *_: delay}
    return options


class FlowjobsEvents(LineLog):
    """A flowjobs QueueEvents recording events.cjs's lines."""

    def __init__(self, redis_url: str, prefix: str, spec: dict[str, Any]) -> None:
        super().__init__(f"flowjobs events {spec}")
        self.listener = QueueEvents(
            spec["queue"],
            connection=redis_url,
            prefix=prefix,
            last_event_id=spec.get("lastEventId", "0-0"),
            blocking_timeout_ms=spec.get("blockingTimeout", 1000),
            autorun=False,
        )
        self.listener.on("*", self._record)
        self.listener.start()
        self.append({"event": "ready", "queue": spec["queue"]})

    def _record(self, event: dict[str, Any]) -> None:
        fields = {k: v for k, v in event.items() if k not in ("event", "id")}
        self.append(
            {"event": "queue-event", "name": event["event"], "fields": fields, "id": event["id"]}
        )

    def close(self) -> None:
        self.listener.close()
        self.close_log()


class FlowjobsHarness:
    """The flowjobs engine on one Redis URL and key prefix; everything closed at the end."""

    side = "flowjobs"

    def __init__(self, redis_url: str, prefix: str) -> None:
        self.redis_url = redis_url
        self.prefix = prefix
        self._producer: FlowjobsProducer | None = None
        self._closables: list[Any] = []

    @property
    def producer(self) -> FlowjobsProducer:
        if self._producer is None:
            self._producer = FlowjobsProducer(self.redis_url, self.prefix)
            self._closables.append(self._producer)
        return self._producer

    def worker(self, spec: dict[str, Any], *, wait_ready: bool = True) -> FlowjobsWorker:
        worker = FlowjobsWorker(self.redis_url, self.prefix, spec)
        self._closables.append(worker)
        return worker

    def events(self, spec: dict[str, Any], *, wait_ready: bool = True) -> FlowjobsEvents:
        events = FlowjobsEvents(self.redis_url, self.prefix, spec)
        self._closables.append(events)
        return events

    def worker_process(self, spec: dict[str, Any]) -> JsonLineProcess:
        """A flowjobs worker in a child process (pyside_flowjobs.py), killable mid-job."""
        import json

        argv = [
            sys.executable,
            str(INTEROP_DIR / "pyside_flowjobs.py"),
            "--redis-url",
            self.redis_url,
            "--prefix",
            self.prefix,
            "--spec",
            json.dumps(spec),
        ]
        proc = JsonLineProcess(argv, label=f"flowjobs worker process {spec}")
        self._closables.append(proc)
        proc.expect("ready", timeout=30)
        return proc

    def close(self) -> None:
        for item in reversed(self._closables):
            if isinstance(item, JsonLineProcess):
                item.stop(timeout=5)
            else:
                item.close()
        self._closables.clear()
