"""Worker memory over a long run: RSS every 10,000 jobs (target: < 150 MB, no growth).

usage: .venv/bin/python bench/memory.py

One Worker at concurrency 50 (async no-op processor; MEM_STYLE=sync for a plain def)
processes 100,000 pre-enqueued jobs. The jobs are enqueued by a separate process so that
the producer's allocations do not count. RSS is read from /proc/self/status (VmRSS) at
the start, after the worker has started, and every MEM_EVERY completed jobs, counted by
the worker's own "completed" event; the series is printed as a table at the end.

Starts a private redis-server on a free port (or uses REDIS_URL, with a key prefix of
its own that is deleted afterwards). Environment: MEM_JOBS [100000], MEM_EVERY [10000],
MEM_CONCURRENCY [50], MEM_STYLE [async|sync], MEM_TARGET_MB [150], CASE_TIMEOUT [600].
Exits 1 if the peak is over the target or the last sample grew by more than 10 % (and
more than 10 MB) over the first sample taken after 10,000 jobs.
"""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import threading
import time
from typing import Any

BENCH = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCH)
sys.path.insert(0, REPO)
sys.path.insert(0, BENCH)

import redis  # noqa: E402
from engine import bench_redis, delete_prefix  # noqa: E402

N_JOBS = int(os.environ.get("MEM_JOBS", "100000"))
EVERY = int(os.environ.get("MEM_EVERY", "10000"))
CONCURRENCY = int(os.environ.get("MEM_CONCURRENCY", "50"))
STYLE = os.environ.get("MEM_STYLE", "async")
TARGET_MB = float(os.environ.get("MEM_TARGET_MB", "150"))
TIMEOUT_S = float(os.environ.get("CASE_TIMEOUT", "600"))
QUEUE = "bench-mem"

PRODUCER = """
import sys
from flowjobs.engine import Queue
sys.path.insert(0, {bench!r})
from flowjobs_bench import payload
url, prefix, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
q = Queue({queue!r}, connection=url, prefix=prefix)
for start in range(0, n, 1000):
    q.add_bulk([{{"name": "job", "data": payload(i)}} for i in range(start, min(n, start + 1000))])
q.close()
"""


def rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    raise RuntimeError("no VmRSS in /proc/self/status")


def enqueue(url: str, prefix: str) -> None:
    env = dict(os.environ, PYTHONPATH=REPO)
    code = PRODUCER.format(bench=BENCH, queue=QUEUE)
    subprocess.run([sys.executable, "-c", code, url, prefix, str(N_JOBS)], env=env, check=True)


def measure(url: str, prefix: str) -> list[tuple[str, int, float]]:
    from flowjobs.engine import Worker

    samples: list[tuple[str, int, float]] = []
    lock = threading.Lock()
    done = threading.Event()
    count = 0

    def on_completed(job: Any, result: Any) -> None:
        nonlocal count
        with lock:
            count += 1
            n = count
        if n % EVERY == 0:
            samples.append((f"after {n:,} jobs", n, rss_mb()))
        if n >= N_JOBS:
            done.set()

    async def noop_async(job: Any) -> None:
        return None

    def noop_sync(job: Any) -> None:
        return None

    gc.collect()
    samples.append(("before the worker", 0, rss_mb()))
    worker = Worker(
        QUEUE,
        noop_sync if STYLE == "sync" else noop_async,
        connection=url,
        prefix=prefix,
        concurrency=CONCURRENCY,
        autorun=False,
    )
    worker.on("completed", on_completed)
    t0 = time.monotonic()
    thread = threading.Thread(target=worker.run, name="bench-worker", daemon=True)
    thread.start()
    if not done.wait(TIMEOUT_S):
        worker.close()
        raise SystemExit(f"only {count} of {N_JOBS} jobs completed within {TIMEOUT_S:.0f}s")
    elapsed = time.monotonic() - t0
    worker.close()
    thread.join(30)
    gc.collect()
    samples.append(("after close()", count, rss_mb()))
    print(f"# {count:,} jobs in {elapsed:.1f}s ({count / elapsed:,.0f} jobs/s incl. start-up)")
    return samples


def main() -> int:
    with bench_redis() as (url, given):
        prefix = f"fjmem{os.getpid()}" if given else "bull"
        client = redis.Redis.from_url(url)
        print(f"# redis {client.info('server')['redis_version']} at {url}")
        print(f"# {N_JOBS:,} jobs, concurrency {CONCURRENCY}, {STYLE} no-op processor")
        try:
            t0 = time.monotonic()
            enqueue(url, prefix)
            print(f"# enqueued in {time.monotonic() - t0:.1f}s by a separate process")
            samples = measure(url, prefix)
        finally:
            if given:
                delete_prefix(client, prefix)
    print(f"{'when':<22} {'jobs':>9} {'RSS MB':>8}")
    for label, n, mb in samples:
        print(f"{label:<22} {n:>9,} {mb:>8.1f}")
    peak = max(mb for _, _, mb in samples)
    steady = [mb for label, _, mb in samples if label.startswith("after ") and "jobs" in label]
    growth = steady[-1] - steady[0] if steady else 0.0
    print(
        f"peak {peak:.1f} MB (target < {TARGET_MB:.0f}); growth from the first to the last "
        f"sample taken while processing: {growth:+.1f} MB"
    )
    grew = bool(steady) and growth > max(10.0, 0.10 * steady[0])
    return 1 if peak > TARGET_MB or grew else 0


if __name__ == "__main__":
    sys.exit(main())
