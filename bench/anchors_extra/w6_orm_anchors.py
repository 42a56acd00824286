"""W6 for the anchors (Celery, RQ, django-tasks-db), written for flowjobs' bench/run:
one ORM insert per job (bench_site's `Row`) on PostgreSQL, as
bench/flowjobs_bench.py's W6.orm.runworker does it for flowjobs.

usage: w6_orm_anchors.py CONTESTANT cases | version | run CASE     (CONTESTANT: celery,
       rq, django-tasks-db; runs with the anchors' venv python)
       w6_orm_anchors.py rq-worker                                  (internal)

Each run: a throwaway database on BENCH_W6_SERVER_URL, bench_site's tables (migrate
--run-syncdb, settings w6_anchor_settings), BENCH_W6_N jobs enqueued with no worker
running, then the workers (a budget of BENCH_W6_CONCURRENCY [2] jobs at a time) drain
them. jobs_per_s = rows / (last created_at - first created_at), the database's clock
(bench_site/w6.py, shared with flowjobs' contestant). Celery and RQ use the harness's
Redis as broker. The number of database sessions the workers opened goes to stderr.
"""

import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
BENCH_DIR = os.path.join(os.environ.get("FLOWJOBS_SRC") or os.path.dirname(HERE), "bench")
sys.path[:0] = [HERE, BENCH_DIR]
from bench_site import w6  # noqa: E402
from common import REDIS_URL, Deadline, emit, log, payload, stop_subprocess  # noqa: E402

QUEUE = "bench-orm"
# Celery's Django fixup closes the database connection before and after every task unless
# CELERY_DB_REUSE_MAX is set (then every REUSE_MAX tasks): large enough to never reconnect.
CELERY_REUSE_MAX = str(100 * w6.N_JOBS)
C = str(w6.CONCURRENCY)
CELERY_POOLS = {  # case: (worker options, CELERY_DB_REUSE_MAX or None for the default)
    "W6.orm.prefork2.reuse": (["-P", "prefork", "-c", C], CELERY_REUSE_MAX),
    "W6.orm.prefork2": (["-P", "prefork", "-c", C], None),
    "W6.orm.threads2.reuse": (["-P", "threads", "-c", C], CELERY_REUSE_MAX),
}
CASES = {
    "celery": list(CELERY_POOLS),
    "rq": ["W6.orm.fork.p2"],
    "django-tasks-db": ["W6.orm.db_worker.p2"],
}
VERSIONS = {
    "celery": ["celery", "kombu", "django", "psycopg"],
    "rq": ["rq", "django", "psycopg"],
    "django-tasks-db": ["django-tasks-db", "django", "psycopg"],
}


def setup_django(database_url, celery_reuse_max=None):
    """Points this process (and the workers it starts) at the database, and sets Django up."""
    os.environ.update(
        DJANGO_SETTINGS_MODULE="w6_anchor_settings",
        DATABASE_URL=database_url,
        REDIS_URL=REDIS_URL,
        PYTHONPATH=os.pathsep.join([HERE, BENCH_DIR, os.environ.get("PYTHONPATH", "")]),
    )
    os.environ.pop("W6_CELERY_DB_REUSE_MAX", None)
    if celery_reuse_max:
        os.environ["W6_CELERY_DB_REUSE_MAX"] = celery_reuse_max
    import django
    from django.core.management import call_command

    django.setup()
    call_command("migrate", run_syncdb=True, verbosity=0)


def wait_rows(procs, count, stall_s=60.0):
    """Polls the row count (every 0.1 s) until it reaches count; fails when a worker exits
    or no row is added for stall_s (a failing task)."""
    from bench_site.models import Row

    dl = Deadline()
    seen, t_seen = -1, time.monotonic()
    while (rows := Row.objects.count()) < count:
        for p in procs:
            if p.poll() is not None:
                raise RuntimeError(f"a worker exited with {p.returncode} at {rows} rows")
        if rows != seen:
            seen, t_seen = rows, time.monotonic()
        elif time.monotonic() - t_seen > stall_s:
            raise RuntimeError(f"no new row for {stall_s:.0f} s at {rows} of {count}")
        dl.check(f"waiting for {count} rows")
        time.sleep(0.1)


def drain(contestant, case):
    """Enqueues the jobs, starts the workers, waits for every row, stops the workers."""
    py = sys.executable
    if contestant == "celery":
        options, _ = CELERY_POOLS[case]
        from w6_celery_app import insert_row

        for i in range(w6.N_JOBS):
            insert_row.apply_async(args=(payload(i),))
        celery_bin = os.path.join(os.path.dirname(py), "celery")
        commands = [
            [
                celery_bin,
                "-A",
                "w6_celery_app",
                "worker",
                *options,
                "-Q",
                QUEUE,
                "-l",
                "WARNING",
                "--without-mingle",
                "-n",
                f"w6-{case}@%h",
            ]
        ]
    elif contestant == "rq":
        import redis
        from rq import Queue

        q = Queue(QUEUE, connection=redis.Redis.from_url(REDIS_URL))
        for i in range(w6.N_JOBS):
            q.enqueue("w6_rq_tasks.insert_row", payload(i))
        commands = [[py, os.path.abspath(__file__), "rq-worker"]] * w6.CONCURRENCY
    else:
        from w6_django_tasks import insert_row

        for i in range(w6.N_JOBS):
            insert_row.enqueue(payload(i))
        commands = [[py, "-m", "django", "db_worker"]] * w6.CONCURRENCY
    from django.db import connections

    connections.close_all()
    procs = [subprocess.Popen(cmd, cwd=HERE, stdout=sys.stderr) for cmd in commands]
    try:
        wait_rows(procs, w6.N_JOBS)
    finally:
        for p in procs:
            stop_subprocess(p, term_wait=30)
        connections.close_all()


def run(contestant, case):
    if case not in CASES[contestant]:
        raise SystemExit(f"{contestant} has no case {case}")
    reuse = CELERY_POOLS[case][1] if contestant == "celery" else None
    with w6.throwaway_database(f"anchor_bench_w6_{contestant.replace('-', '_')}") as url:
        setup_django(url, reuse)
        before = w6.sessions_opened(url)
        drain(contestant, case)
        log(f"{contestant} {case}: {w6.sessions_opened(url) - before} database sessions opened")
        emit(contestant, case, "jobs_per_s", w6.rows_per_second(url, w6.N_JOBS))


def rq_worker():
    """RQ's default worker class (`rq.Worker`: forks a work horse per job) in a process
    where Django is set up, as django-rq's `rqworker` runs it."""
    import django
    import redis
    from rq import Worker

    django.setup()
    Worker([QUEUE], connection=redis.Redis.from_url(REDIS_URL)).work()


def main(argv):
    if argv[1:2] == ["rq-worker"]:
        rq_worker()
        return 0
    if len(argv) < 3 or argv[1] not in CASES:
        raise SystemExit(__doc__)
    contestant, cmd = argv[1], argv[2]
    if cmd == "cases":
        print("\n".join(CASES[contestant]))
    elif cmd == "version":
        from importlib.metadata import version

        emit(
            contestant,
            "info",
            "version",
            ",".join(f"{p}={version(p)}" for p in VERSIONS[contestant]),
        )
    elif cmd == "run" and len(argv) > 3:
        run(contestant, argv[3])
    else:
        raise SystemExit(__doc__)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
