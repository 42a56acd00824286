"""A flowjobs worker in its own process, so that a test can SIGKILL it mid-job.

    python pyside_flowjobs.py --redis-url URL --prefix P --spec '{...}'

Same spec and the same JSON lines as worker.cjs (see behaviours.py); SIGTERM
closes the workers and prints {"event": "closed"}.
"""

from __future__ import annotations

import argparse
import importlib
import json
import signal
import sys
import threading
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent

OPTION_NAMES = {
    "concurrency": "concurrency",
    "lockDuration": "lock_duration",
    "stalledInterval": "stalled_interval",
    "maxStalledCount": "max_stalled_count",
    "skipStalledCheck": "skip_stalled_check",
    "skipLockRenewal": "skip_lock_renewal",
    "name": "name",
}
print_lock = threading.Lock()


def emit(line: dict[str, Any]) -> None:
    with print_lock:
        sys.stdout.write(json.dumps(line) + "\n")
        sys.stdout.flush()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--spec", type=json.loads, required=True)
    args = parser.parse_args()
    # the project root (for flowjobs) and this directory (for behaviours.py)
    sys.path[:0] = [str(HERE.parent.parent), str(HERE)]
    make_processor = importlib.import_module("behaviours").make_processor
    worker_class = importlib.import_module("flowjobs.engine").Worker
    spec = args.spec
    stop = threading.Event()
    processor = make_processor(spec.get("behaviours", {}), emit, stop)
    names = spec.get("queues") or [spec["queue"]]
    options = {OPTION_NAMES[k]: v for k, v in spec.items() if k in OPTION_NAMES}
    workers = []
    for name in names:
        worker = worker_class(
            name,
            processor,
            connection=args.redis_url,
            prefix=args.prefix,
            autorun=False,
            drain_delay=spec.get("drainDelay", 1),
            **options,
        )

        def completed(job: Any, result: Any, queue: str = name) -> None:
            emit({"event": "completed", "queue": queue, "id": job.id, "returnvalue": result})

        def failed(job: Any, error: Any, queue: str = name) -> None:
            emit({"event": "failed", "queue": queue, "id": job.id, "failedReason": str(error)})

        worker.on("completed", completed)
        worker.on("failed", failed)
        worker.on(
            "stalled", lambda job_id, q=name: emit({"event": "stalled", "queue": q, "id": job_id})
        )
        workers.append(worker)
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    for worker in workers:
        worker.start()
    emit({"event": "ready", "queues": names})
    stop.wait()
    for worker in workers:
        worker.close(force=True, timeout=5)
    emit({"event": "closed"})
    return 0


if __name__ == "__main__":
    sys.exit(main())
