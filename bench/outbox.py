"""Enqueue on commit: the transactional outbox against the old on_commit hook, on PostgreSQL.

usage: DATABASE_URL=postgres://user:pw@127.0.0.1:5432/any .venv/bin/python bench/outbox.py

Creates a scratch database next to the one DATABASE_URL names (dropped at the end),
migrates it, starts a private redis-server, and measures in this process:

  commit.tx    OUTBOX_TX transactions (default 2,000), each inserting one row of its own
               and enqueueing one job on commit; transactions/s
  commit.x5    OUTBOX_TX / 5 transactions of one row and five enqueues; transactions/s
  latency      add-to-start p50/p99 with an idle flowjobs Worker (concurrency 1),
               OUTBOX_LAT_SAMPLES samples (default 300): from before COMMIT to the
               processor's first line, one job at a time

Contestants: "hook" is what flowjobs did before the outbox (validate, then
``transaction.on_commit(queue.add)``: lost jobs when Redis fails at commit); "outbox"
is ``flowjobs.enqueue.enqueue(..., on_commit=True)`` (one insert in the transaction,
push after COMMIT, delete after Redis confirmed). Both on the same Redis and database
in the same run, alternating rounds (OUTBOX_ROUNDS, default 3; medians).
"""

from __future__ import annotations

import os
import statistics
import sys
import threading
import time
import uuid
from collections.abc import Callable
from urllib.parse import urlsplit, urlunsplit

import django
import psycopg
from django.conf import settings
from engine import fmt, machine, print_table, private_redis  # bench/engine.py, beside this

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TX = int(os.environ.get("OUTBOX_TX", 2000))
LAT_SAMPLES = int(os.environ.get("OUTBOX_LAT_SAMPLES", 300))
ROUNDS = int(os.environ.get("OUTBOX_ROUNDS", 3))


def scratch_database(url: str) -> tuple[str, Callable[[], None]]:
    """A new empty database beside ``url``'s; returns its URL and a function dropping it."""
    parts = urlsplit(url)
    name = f"flowjobs_bench_{uuid.uuid4().hex[:8]}"
    admin = psycopg.connect(url, autocommit=True)
    admin.execute(f'CREATE DATABASE "{name}"')

    def drop() -> None:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()

    return urlunsplit(parts._replace(path=f"/{name}")), drop


def configure(database_url: str, redis_url: str) -> None:
    import environ

    sys.path.insert(0, REPO)  # this checkout's flowjobs

    settings.configure(
        INSTALLED_APPS=["django.contrib.contenttypes", "django.contrib.auth", "flowjobs"],
        DATABASES={"default": environ.Env.db_url_config(database_url)},
        DEFAULT_AUTO_FIELD="django.db.models.BigAutoField",
        USE_TZ=True,
        FLOWJOBS={"REDIS_URL": redis_url, "PREFIX": "bench", "MIRROR": False, "CHECK_REDIS": False},
    )
    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


def hook_enqueue(queue_name: str, name: str, data: dict) -> None:
    """flowjobs before the outbox: validated now, written by an on_commit hook."""
    from django.db import transaction

    from flowjobs import conf

    queue = conf.get_queue(queue_name)
    encoded = queue.encode(name, data)
    transaction.on_commit(lambda: queue.add_encoded([encoded]))


def outbox_enqueue(queue_name: str, name: str, data: dict) -> None:
    from flowjobs.enqueue import enqueue

    enqueue(queue_name, name, data, on_commit=True)


CONTESTANTS: dict[str, Callable[[str, str, dict], None]] = {
    "hook": hook_enqueue,
    "outbox": outbox_enqueue,
}


def throughput(
    enqueue: Callable[[str, str, dict], None], queue: str, tx: int, per_tx: int
) -> float:
    from django.contrib.auth.models import Group
    from django.db import transaction

    started = time.perf_counter()
    for index in range(tx):
        with transaction.atomic():
            Group.objects.create(name=f"{queue}-{index}")
            for job in range(per_tx):
                enqueue(queue, "confirm", {"row": index, "job": job})
    return tx / (time.perf_counter() - started)


def latency(enqueue: Callable[[str, str, dict], None], queue_name: str) -> tuple[float, float]:
    from django.contrib.auth.models import Group
    from django.db import transaction

    from flowjobs import conf
    from flowjobs.engine import Worker

    started_at: dict[int, float] = {}
    arrived = threading.Event()

    def process(job):  # noqa: ANN001, ANN202
        started_at[job.data["sample"]] = time.perf_counter()
        arrived.set()

    queue = conf.get_queue(queue_name)
    # autorun: the worker runs in its own thread
    worker = Worker(queue_name, process, connection=queue.client, prefix=queue.prefix)
    samples = []
    try:
        for sample in range(LAT_SAMPLES + 10):
            arrived.clear()
            before = time.perf_counter()
            with transaction.atomic():
                Group.objects.create(name=f"{queue_name}-{sample}")
                enqueue(queue_name, "ping", {"sample": sample})
            if not arrived.wait(10):
                raise SystemExit(f"{queue_name}: sample {sample} never started")
            if sample >= 10:  # warm-up
                samples.append((started_at[sample] - before) * 1000)
    finally:
        worker.close()
    samples.sort()
    return samples[len(samples) // 2], samples[int(len(samples) * 0.99) - 1]


def main() -> int:
    url = os.environ.get("DATABASE_URL", "")
    if not url.startswith(("postgres://", "postgresql://")):
        raise SystemExit(
            "set DATABASE_URL to a PostgreSQL database (a scratch one is made beside it)"
        )
    database_url, drop = scratch_database(url)
    results: dict[tuple[str, str, str], list[float]] = {}
    try:
        with private_redis() as redis_url:
            configure(database_url, redis_url)
            for round_number in range(ROUNDS):
                order = list(CONTESTANTS) if round_number % 2 == 0 else list(CONTESTANTS)[::-1]
                for name in order:
                    enqueue = CONTESTANTS[name]
                    tag = f"{name}-{round_number}"
                    results.setdefault(("commit.tx", name, "tx/s"), []).append(
                        throughput(enqueue, f"tx-{tag}", TX, 1)
                    )
                    results.setdefault(("commit.x5", name, "tx/s"), []).append(
                        throughput(enqueue, f"x5-{tag}", max(1, TX // 5), 5)
                    )
                    p50, p99 = latency(enqueue, f"lat-{tag}")
                    results.setdefault(("latency", name, "p50 ms"), []).append(p50)
                    results.setdefault(("latency", name, "p99 ms"), []).append(p99)
    finally:
        from django.db import connections

        if settings.configured:
            connections.close_all()
        drop()
    rows = [
        (
            workload,
            name,
            metric,
            fmt(statistics.median(values)),
            f"{fmt(min(values))} .. {fmt(max(values))}",
        )
        for (workload, name, metric), values in results.items()
    ]
    print(
        f"# bench/outbox.py: {ROUNDS} round(s), {TX} tx, {LAT_SAMPLES} latency samples; {machine()}"
    )
    print_table(rows, ("workload", "contestant", "metric", "value", "min .. max"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
