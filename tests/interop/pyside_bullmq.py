"""Driver for the official Python `bullmq` package (PyPI), run from its scratch venv.

    python pyside_bullmq.py serve  --redis-url URL --prefix P   (commands on stdin)
    python pyside_bullmq.py worker --redis-url URL --prefix P --spec '{...}'

It speaks the same JSON-line protocol as producer.cjs / worker.cjs so that the
tests drive both official clients the same way. It imports `bullmq` (the PyPI
package), so it only runs inside the virtualenv made by the `bullmq_py` fixture.

serve commands: ping, add {queue, name, data?, opts?}, flow {flow},
getJob {queue, id}, getJobCounts {queue, types?}, getJobState {queue, id},
getChildrenValues {queue, id}.
worker spec: queues | queue, concurrency, doneAfter, behaviours {name|"*": behaviour}
with actions echo (default), return {value}, throw {message},
unrecoverable {message}, children (returns {"values": getChildrenValues()}).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from typing import Any

from bullmq import FlowProducer, Queue, UnrecoverableError, Worker


def emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def job_to_json(job: Any) -> dict[str, Any] | None:
    if job is None:
        return None
    return {
        "id": job.id,
        "name": job.name,
        "data": job.data,
        "opts": job.opts,
        "timestamp": job.timestamp,
        "delay": job.delay,
        "priority": job.priority,
        "attemptsMade": job.attemptsMade,
        "attemptsStarted": job.attemptsStarted,
        "processedOn": job.processedOn or None,
        "finishedOn": job.finishedOn or None,
        "returnvalue": job.returnvalue,
        "failedReason": job.failedReason,
        "stacktrace": job.stacktrace,
        "parentKey": job.parentKey,
        "parent": job.parent,
    }


def flow_to_json(node: dict[str, Any]) -> dict[str, Any]:
    return {
        "job": job_to_json(node["job"]),
        "children": [flow_to_json(child) for child in node.get("children") or []],
    }


class Driver:
    def __init__(self, redis_url: str, prefix: str) -> None:
        self.opts = {"connection": redis_url, "prefix": prefix}
        self.queues: dict[str, Queue] = {}
        self.flow_producer: FlowProducer | None = None

    def queue(self, name: str) -> Queue:
        if name not in self.queues:
            self.queues[name] = Queue(name, dict(self.opts))
        return self.queues[name]

    async def require_job(self, cmd: dict[str, Any]) -> Any:
        job = await self.queue(cmd["queue"]).getJob(cmd["id"])
        if job is None:
            raise LookupError(f"job {cmd['id']} not found in queue {cmd['queue']}")
        return job

    async def run(self, cmd: dict[str, Any]) -> Any:
        name = cmd.get("cmd")
        if name == "ping":
            return "pong"
        if name == "add":
            job = await self.queue(cmd["queue"]).add(
                cmd["name"], cmd.get("data", {}), cmd.get("opts", {})
            )
            return job_to_json(job)
        if name == "flow":
            if self.flow_producer is None:
                self.flow_producer = FlowProducer(dict(self.opts))
            return flow_to_json(await self.flow_producer.add(cmd["flow"]))
        if name == "getJob":
            return job_to_json(await self.queue(cmd["queue"]).getJob(cmd["id"]))
        if name == "getJobCounts":
            return await self.queue(cmd["queue"]).getJobCounts(*cmd.get("types", []))
        if name == "getJobState":
            return await self.queue(cmd["queue"]).getJobState(cmd["id"])
        if name == "getChildrenValues":
            return await (await self.require_job(cmd)).getChildrenValues()
        raise ValueError(f"unknown command {name!r}")

    async def close(self) -> None:
        for queue in self.queues.values():
            await queue.close()
        if self.flow_producer is not None:
            await self.flow_producer.close()


async def serve(args: argparse.Namespace) -> int:
    driver = Driver(args.redis_url, args.prefix)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    emit({"ok": True, "cmd": "ready", "result": None})
    while line := await reader.readline():
        if not line.strip():
            continue
        cmd: dict[str, Any] = {}
        try:
            cmd = json.loads(line)
            result = await driver.run(cmd)
            emit({"ok": True, "cmd": cmd.get("cmd"), "result": result})
        except Exception as exc:  # noqa: BLE001 - every failure is reported to the test
            emit(
                {
                    "ok": False,
                    "cmd": cmd.get("cmd"),
                    "error": {"name": type(exc).__name__, "message": str(exc)},
                }
            )
    await driver.close()
    return 0


async def work(args: argparse.Namespace) -> int:
    spec = args.spec or {}
    queue_names = spec.get("queues") or [spec["queue"]]
    behaviours = spec.get("behaviours", {})
    done = asyncio.Event()
    outcomes = 0

    def count_outcome() -> None:
        nonlocal outcomes
        outcomes += 1
        if spec.get("doneAfter") and outcomes == spec["doneAfter"]:
            emit({"event": "done", "count": outcomes})
            done.set()

    async def process(job: Any, token: str) -> Any:
        behaviour = behaviours.get(job.name) or behaviours.get("*") or {"action": "echo"}
        action = behaviour.get("action", "echo")
        emit(
            {
                "event": "process",
                "queue": job.queue.name,
                "id": job.id,
                "name": job.name,
                "data": job.data,
                "opts": job.opts,
                "attemptsMade": job.attemptsMade,
                "parentKey": job.parentKey,
                "action": action,
            }
        )
        if action == "echo":
            return job.data
        if action == "return":
            return behaviour.get("value")
        if action == "throw":
            raise RuntimeError(behaviour.get("message", "py boom"))
        if action == "unrecoverable":
            raise UnrecoverableError(behaviour.get("message", "py unrecoverable"))
        if action == "children":
            return {"values": await job.getChildrenValues()}
        raise ValueError(f"unknown action {action!r}")

    workers = []
    for name in queue_names:
        worker = Worker(
            name,
            process,
            {
                "connection": args.redis_url,
                "prefix": args.prefix,
                "concurrency": spec.get("concurrency", 1),
                "drainDelay": 1,
            },
        )

        def on_completed(job: Any, result: Any, *_: Any, queue: str = name) -> None:
            emit(
                {
                    "event": "completed",
                    "queue": queue,
                    "id": job.id,
                    "name": job.name,
                    "returnvalue": result,
                }
            )
            count_outcome()

        def on_failed(job: Any, err: Any, *_: Any, queue: str = name) -> None:
            final = bool(job.finishedOn)
            emit(
                {
                    "event": "failed",
                    "queue": queue,
                    "id": job.id,
                    "name": job.name,
                    "failedReason": str(err),
                    "final": final,
                }
            )
            if final:
                count_outcome()

        worker.on("completed", on_completed)
        worker.on("failed", on_failed)
        workers.append(worker)

    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, done.set)
    emit({"event": "ready", "queues": queue_names})
    await done.wait()
    for worker in workers:
        await worker.close(force=True)
    emit({"event": "closed"})
    return 0


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["serve", "worker"])
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--spec", type=json.loads, default=None)
    args = parser.parse_args()
    return asyncio.run(serve(args) if args.mode == "serve" else work(args))


if __name__ == "__main__":
    sys.exit(main())
