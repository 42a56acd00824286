"""The SQL mirror's projector on its own: how many jobs per second of events it applies.

usage: .venv/bin/python bench/mirror.py [--profile]

Starts a private redis-server (or uses REDIS_URL), adds BENCH_N no-op jobs to one queue
and lets an engine Worker (async, concurrency 50) complete them, with the queue's events
stream allowed to keep every entry (so nothing is trimmed). Each job leaves the four events
a BullMQ worker writes (added, waiting, active, completed). Then a Projector, as runworker's
services process runs it, applies the whole stream into a fresh database (bench_site: SQLite
in a temp dir, or DATABASE_URL), and the table says jobs/s, events/s and CPU µs per job.

A mirror that keeps up with a queue doing R jobs/s needs a projector rate above R: below it,
the default 10,000-entry events stream is trimmed past the projector and it reconciles.

Environment: BENCH_N [20000], REPEATS [3] (a fresh database per round, the median shown),
DATABASE_URL, REDIS_URL. `--profile` prints the projector's 25 costliest functions (cProfile,
one round; BENCH_SORT=tottime sorts by own time).
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import tempfile
import time

BENCH = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [BENCH, os.path.dirname(BENCH)]

from engine import bench_redis, delete_prefix, machine, print_table  # noqa: E402

N = int(os.environ.get("BENCH_N", "20000"))
REPEATS = int(os.environ.get("REPEATS", "3"))
QUEUE = "mirrorbench"
PREFIX = "bull"


def fill(url: str) -> int:
    """Adds N jobs and has a worker complete them; returns the stream's length."""
    import redis

    from flowjobs.engine import Queue, Worker

    client = redis.Redis.from_url(url)
    delete_prefix(client, PREFIX)
    client.hset(f"{PREFIX}:{QUEUE}:meta", "opts.maxLenEvents", 50 * N)

    async def noop(job):
        return {"ok": True}

    queue = Queue(QUEUE, connection=url, prefix=PREFIX)
    for start in range(0, N, 1000):
        queue.add_bulk(
            [
                {"name": "noop", "data": {"i": i, "user": "someone@example.com"}}
                for i in range(start, min(N, start + 1000))
            ]
        )
    worker = Worker(QUEUE, noop, connection=url, prefix=PREFIX, concurrency=50, autorun=False)
    worker.start()
    deadline = time.monotonic() + 300
    while client.zcard(f"{PREFIX}:{QUEUE}:completed") < N:
        if time.monotonic() > deadline:
            raise SystemExit("the worker did not complete the jobs in 300 s")
        time.sleep(0.1)
    worker.close()
    queue.close()
    return client.xlen(f"{PREFIX}:{QUEUE}:events")


def fresh_database() -> None:
    from django.core.management import call_command
    from django.db import connection

    from flowjobs.models import JobRecord, StreamPosition

    call_command("migrate", verbosity=0)
    with connection.cursor():
        JobRecord.objects.all().delete()
        StreamPosition.objects.all().delete()


def project(url: str, profile: bool) -> tuple[float, float]:
    """Applies the whole stream; returns (wall seconds, CPU seconds of this process)."""
    import redis

    from flowjobs.mirror.projector import Projector

    projector = Projector(redis.Redis.from_url(url, decode_responses=True), PREFIX)
    projector.load_positions()
    profiler = None
    if profile:
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    wall, cpu = time.perf_counter(), time.process_time()
    projector.catch_up()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    if profiler is not None:
        import pstats

        profiler.disable()
        pstats.Stats(profiler).sort_stats(os.environ.get("BENCH_SORT", "cumulative")).print_stats(
            25
        )
    if projector.reconciles:
        raise SystemExit(f"the projector reconciled {projector.reconciles} times")
    return wall, cpu


def main() -> int:
    profile = "--profile" in sys.argv[1:]
    site_dir = tempfile.mkdtemp(prefix="flowjobs-bench-mirror-")
    os.environ.setdefault("BENCH_SITE_DIR", site_dir)
    os.environ["DJANGO_SETTINGS_MODULE"] = "bench_site.settings"
    with bench_redis() as (url, _given):
        os.environ["REDIS_URL"] = url
        import django

        django.setup()
        from flowjobs.models import JobRecord

        events = fill(url)
        rounds = []
        for _ in range(1 if profile else REPEATS):
            fresh_database()
            rounds.append(project(url, profile))
            if JobRecord.objects.count() != N:
                raise SystemExit(f"{JobRecord.objects.count()} rows mirrored, expected {N}")
        wall = statistics.median(r[0] for r in rounds)
        cpu = statistics.median(r[1] for r in rounds)
        from django.db import connection

        print(f"# {machine()}; database {connection.vendor}; {N} jobs, {events} events")
        print_table(
            [
                (
                    "projector catch-up",
                    f"{N / wall:,.0f}",
                    f"{events / wall:,.0f}",
                    f"{cpu / N * 1e6:,.0f}",
                    f"{wall / N * 1e6:,.0f}",
                )
            ],
            ("case", "jobs/s", "events/s", "CPU µs/job", "wall µs/job"),
        )
    return 0


if __name__ == "__main__":
    asyncio.set_event_loop_policy(None)
    raise SystemExit(main())
