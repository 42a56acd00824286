"""A standalone worker process for the chaos tests.

Runs one engine `Worker` per queue named on the command line and records every
execution (queue, job id, pid, attempt) as one JSON line in
`<record-dir>/exec-<pid>.jsonl`, written with a single `os.write` on an O_APPEND
descriptor before the job's work starts. The line is in the kernel once the
call returns, so it survives a SIGKILL a moment later; that is what lets the
driver count duplicate executions after killing workers at random.

    python -m tests.chaos.worker_proc --url redis://... --prefix p --queues a,b \
        --record-dir DIR [--concurrency 2] [--lock-duration 2000] ...

Jobs named "parent" check that none of their children is still pending and
return how many children completed; other jobs sleep `--work-ms` (their
"work") and return their `n`. Logs go to stderr (the driver sends them to a
file). SIGTERM closes the workers gracefully.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from typing import Any

from flowjobs.engine import Worker
from tests.helpers import work_for


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--queues", required=True, help="comma-separated queue names")
    parser.add_argument("--record-dir", required=True)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--lock-duration", type=int, default=2000)
    parser.add_argument("--stalled-interval", type=int, default=1000)
    parser.add_argument("--max-stalled-count", type=int, default=1000)
    parser.add_argument("--work-ms", type=int, default=20)
    parser.add_argument("--drain-delay", type=float, default=1.0)
    return parser.parse_args(argv)


class Recorder:
    """Appends one JSON line per execution; each line is one write(2) call."""

    def __init__(self, directory: str) -> None:
        path = os.path.join(directory, f"exec-{os.getpid()}.jsonl")
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self._lock = threading.Lock()

    def record(self, **fields: Any) -> None:
        line = (json.dumps(fields, separators=(",", ":")) + "\n").encode()
        with self._lock:
            os.write(self._fd, line)


def make_processor(queue_name: str, recorder: Recorder, work_ms: int):
    pid = os.getpid()

    def process(job: Any) -> Any:
        recorder.record(
            queue=queue_name, job=job.id, pid=pid, attempt=job.attempts_started, name=job.name
        )
        if job.name == "parent":
            counts = job.get_dependencies_count()
            if counts["unprocessed"]:
                raise RuntimeError(f"parent {job.id} runs with {counts['unprocessed']} pending")
            return {"children": counts["processed"]}
        # The job's simulated work; the chaos driver kills processes in the middle of it.
        work_for(work_ms / 1000)
        return {"n": job.data.get("n") if isinstance(job.data, dict) else None, "pid": pid}

    return process


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format=f"%(asctime)s pid={os.getpid()} %(levelname)s %(name)s: %(message)s",
    )
    recorder = Recorder(args.record_dir)
    workers = [
        Worker(
            name,
            make_processor(name, recorder, args.work_ms),
            connection=args.url,
            prefix=args.prefix,
            concurrency=args.concurrency,
            lock_duration=args.lock_duration,
            stalled_interval=args.stalled_interval,
            max_stalled_count=args.max_stalled_count,
            drain_delay=args.drain_delay,
        )
        for name in args.queues.split(",")
    ]
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    print(f"ready {os.getpid()}", flush=True)
    while not stop.wait(0.5):
        if all(worker.wait_until_closed(0) for worker in workers):
            logging.error("every worker stopped; exiting")
            return 1
    for worker in workers:
        worker.close(timeout=10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
