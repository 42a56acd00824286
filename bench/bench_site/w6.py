"""W6's database and rate, shared by flowjobs' contestant and the W6 anchors
(bench/anchors_extra/w6_orm_anchors.py): a throwaway PostgreSQL database per run, and
jobs/s from the `Row`s' own `created_at` (the database's clock), first row to last.
Only psycopg: importable without Django, flowjobs or the anchors' packages."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

# a server where the bench may create (and drop) a database of its own
SERVER_URL = os.environ.get(
    "BENCH_W6_SERVER_URL", "postgres://flowjobs:flowjobs@127.0.0.1:5432/postgres"
)
N_JOBS = int(os.environ.get("BENCH_W6_N", "5000"))
CONCURRENCY = int(os.environ.get("BENCH_W6_CONCURRENCY", "2"))
# runworker's --processes for W6.orm.runworker (each with CONCURRENCY): the anchors keep
# their own shape, so compare with them at the default only
PROCESSES = int(os.environ.get("BENCH_W6_PROCESSES", "1"))


@contextmanager
def throwaway_database(prefix: str) -> Iterator[str]:
    """Creates an empty database on SERVER_URL, yields its URL, drops it afterwards."""
    import psycopg

    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(SERVER_URL, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield SERVER_URL.rsplit("/", 1)[0] + "/" + name
    finally:
        with psycopg.connect(SERVER_URL, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def rows_per_second(database_url: str, expected: int) -> float:
    """Rows of bench_site's `Row` per second, first to last `created_at`; checks that
    there is exactly one row per job."""
    import psycopg

    with psycopg.connect(database_url) as db:
        rows, first, last = db.execute(
            "SELECT count(*), min(created_at), max(created_at) FROM bench_site_row"
        ).fetchone()
    if rows != expected:
        raise RuntimeError(f"{rows} rows for {expected} jobs")
    return rows / (last - first).total_seconds()


def sessions_opened(database_url: str) -> int:
    """Sessions the server has opened on this database so far (pg_stat_database):
    tells a worker that reconnects per job from one that keeps its connection."""
    import psycopg

    with psycopg.connect(database_url) as db:
        (count,) = db.execute(
            "SELECT sessions FROM pg_stat_database WHERE datname = current_database()"
        ).fetchone()
    return int(count)
