"""The SQL mirror's projector on its own: how many jobs per second of events it applies.

usage: .venv/bin/python bench/mirror.py [--profile | --live]

Starts a private redis-server (or uses REDIS_URL), adds BENCH_N no-op jobs to one queue
and lets an engine Worker (async, concurrency 50) complete them, with the queue's events
stream allowed to keep every entry (so nothing is trimmed). Each job leaves the four events
a BullMQ worker writes (added, waiting, active, completed). Then a Projector, as runworker's
services process runs it, applies the whole stream into a fresh database (bench_site: SQLite
in a temp dir, or DATABASE_URL), and the table says jobs/s, events/s and CPU µs per job.

A mirror that keeps up with a queue doing R jobs/s needs a projector rate above R: below it,
the default 10,000-entry events stream is trimmed past the projector and it reconciles.

`--live` shows the "keeps up" target directly: an engine Worker (async, concurrency 50)
in a subprocess drains BENCH_N jobs at full speed, fed by a producer there that keeps the
wait list topped up, while a Projector follows the queue in this process (as run() does)
with the queue's DEFAULT events cap (10,000 entries). The table says the worker's jobs/s,
the projector's CPU µs per job, whether it reconciled (the stream was trimmed past it),
the most events it was behind, and how far behind it was when the worker finished.

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
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

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


LIVE_FEED_LOW = 2000  # the live producer adds jobs whenever fewer than this are waiting


def live_worker(url: str, n: int) -> None:
    """The --live subprocess: keeps jobs coming and a worker draining them; prints jobs/s."""
    import redis

    from flowjobs.engine import Queue, Worker

    async def noop(job):
        return {"ok": True}

    client = redis.Redis.from_url(url)
    queue = Queue(QUEUE, connection=url, prefix=PREFIX)
    worker = Worker(QUEUE, noop, connection=url, prefix=PREFIX, concurrency=50, autorun=False)
    added = 0
    started = time.perf_counter()
    worker.start()
    deadline = time.monotonic() + 600
    while client.zcard(f"{PREFIX}:{QUEUE}:completed") < n:
        if time.monotonic() > deadline:
            raise SystemExit("the live worker did not complete the jobs in 600 s")
        if added < n and client.llen(f"{PREFIX}:{QUEUE}:wait") < LIVE_FEED_LOW:
            count = min(1000, n - added)
            queue.add_bulk(
                [
                    {"name": "noop", "data": {"i": i, "user": "someone@example.com"}}
                    for i in range(added, added + count)
                ]
            )
            added += count
        else:
            time.sleep(0.002)  # pacing the producer (a benchmark, not a test)
    elapsed = time.perf_counter() - started
    worker.close()
    queue.close()
    print(f"{n / elapsed:.1f}", flush=True)


def live(url: str) -> list[tuple[str, ...]]:
    """Projects while a worker subprocess drains N jobs; returns the table's row."""
    import subprocess

    import redis

    from flowjobs.mirror.projector import DEFER_READ_S, Projector
    from flowjobs.mirror.settings import mirror_settings
    from flowjobs.models import JobRecord

    client = redis.Redis.from_url(url, decode_responses=True)
    delete_prefix(client, PREFIX)  # the queue's events stream keeps its default cap
    fresh_database()
    events_key = f"{PREFIX}:{QUEUE}:events"
    # The stream exists before the worker starts, so the projector follows it from its
    # first entry, as it follows a deployment's queues (not discovered mid-burst).
    client.xadd(events_key, {"event": "bench-start"})
    child = subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), "--live-worker", url, str(N)],
        stdout=subprocess.PIPE,
        text=True,
    )
    projector = Projector(client, PREFIX)
    projector.load_positions()
    projector.hold_off = projector.defer_bursts = True  # as run() does
    projector.discover(force=True)
    coalesce = mirror_settings().coalesce_ms / 1000
    never = threading.Event()
    most_behind = 0
    cpu = time.process_time()
    while child.poll() is None:
        projector.step(block_ms=100)
        most_behind = max(most_behind, _behind_by(client, projector, events_key))
        held = projector.held_for()
        if held:
            time.sleep(min(held, 0.1))  # as Projector.run() waits out a hold-off
        elif projector.deferring:
            time.sleep(DEFER_READ_S)  # as Projector.run() reads a burst on
        elif coalesce and projector.trickling:
            projector.gather(never, coalesce)  # as Projector.run() lets events gather
    behind_at_end = _behind_by(client, projector, events_key)
    caught_up = time.perf_counter()
    projector.catch_up()
    caught_up = time.perf_counter() - caught_up
    cpu = time.process_time() - cpu
    jobs_per_s = float(child.stdout.read().strip() or "nan")
    if child.returncode != 0:
        raise SystemExit(f"the live worker failed ({child.returncode})")
    mirrored = JobRecord.objects.filter(state="completed").count()
    if mirrored != N:
        raise SystemExit(f"{mirrored} completed rows mirrored, expected {N}")
    return [
        (
            "live: worker + projector",
            f"{jobs_per_s:,.0f}",
            f"{cpu / N * 1e6:,.0f}",
            str(projector.reconciles),
            f"{most_behind:,}",
            f"{behind_at_end:,}",
            f"{caught_up * 1000:,.0f}",
        )
    ]


def _behind_by(client, projector, events_key: str) -> int:
    """Events the worker added that the projector has not applied yet: not read yet, or
    read and held (a burst it reads on, see Projector._defer)."""
    stream = projector.streams.get(events_key)
    if stream is None or stream.entries_read is None:
        return 0
    try:
        added = int(client.xinfo_stream(events_key).get("entries-added") or 0)
    except Exception:  # no stream yet
        return 0
    return max(0, added - stream.entries_read) + projector.unapplied_events


def main() -> int:
    if sys.argv[1:2] == ["--live-worker"]:
        live_worker(sys.argv[2], int(sys.argv[3]))
        return 0
    profile = "--profile" in sys.argv[1:]
    if "--live" in sys.argv[1:]:
        return main_live()
    with django_site() as url:
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


@contextmanager
def django_site() -> Iterator[str]:
    """The bench site set up (its SQLite file in a temp dir) on a Redis; yields its URL."""
    with tempfile.TemporaryDirectory(prefix="flowjobs-bench-mirror-") as site_dir:
        os.environ.setdefault("BENCH_SITE_DIR", site_dir)
        os.environ["DJANGO_SETTINGS_MODULE"] = "bench_site.settings"
        with bench_redis() as (url, _given):
            os.environ["REDIS_URL"] = url
            import django

            django.setup()
            yield url


def main_live() -> int:
    with django_site() as url:
        from django.db import connection

        from flowjobs.mirror.settings import mirror_settings

        rows = live(url)
        print(
            f"# {machine()}; database {connection.vendor}; {N} jobs; events stream capped "
            f"at its default; MIRROR_BATCH_SIZE {mirror_settings().batch_size}"
        )
        print_table(
            rows,
            (
                "case",
                "worker jobs/s",
                "projector CPU µs/job",
                "reconciles",
                "most events behind",
                "behind at worker's end",
                "catch-up ms",
            ),
        )
    return 0


if __name__ == "__main__":
    asyncio.set_event_loop_policy(None)
    raise SystemExit(main())
