"""Contestant 'flowjobs' for the anchor benchmark harness (shared/bench-anchors).

usage: flowjobs_bench.py cases | version | run CASE | latency-worker STYLE |
       worker-process IDX CONCURRENCY [noop|cpu]

Speaks the harness protocol: result lines `flowjobs <case> <metric> <value>` on
stdout, everything else on stderr. Measures exactly like the anchors (see the
harness README): W2 from the jobs' own `processedOn` / `finishedOn` read back
from Redis, W4 inside the processor against `t_add_ms` carried in the job data.
Self-contained (no import of the harness's common.py) so that bench/engine.py
can run it straight from the repository.

Environment: REDIS_URL (or REDIS_HOST/REDIS_PORT), BENCH_PREFIX [bull],
BENCH_N, BENCH_BULK_CHUNK, BENCH_FLOW_CHILDREN, BENCH_LAT_SAMPLES,
BENCH_LAT_WARMUP, BENCH_LAT_GAP_MS, BENCH_CASE_DEADLINE_S, and for W5:
BENCH_W5_FLOWS [200], BENCH_W5_CHILDREN [10], BENCH_W5_WORKERS [2],
BENCH_W5_CONCURRENCY [10], for W6: BENCH_W6_N [5000], BENCH_W6_CONCURRENCY [2],
BENCH_W6_SERVER_URL [postgres://flowjobs:flowjobs@127.0.0.1:5432/postgres].
"""

from __future__ import annotations

import asyncio
import itertools
import math
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import redis

from flowjobs.engine import Queue, Worker

NAME = "flowjobs"
QUEUE = "bench"
REDIS_HOST = os.environ.get("REDIS_HOST", "127.0.0.1")
REDIS_PORT = int(os.environ.get("REDIS_PORT", "6390"))
REDIS_URL = os.environ.get("REDIS_URL") or f"redis://{REDIS_HOST}:{REDIS_PORT}/0"
PREFIX = os.environ.get("BENCH_PREFIX", "bull")

N_JOBS = int(os.environ.get("BENCH_N", "20000"))
BULK_CHUNK = int(os.environ.get("BENCH_BULK_CHUNK", "1000"))
FLOW_CHILDREN = int(os.environ.get("BENCH_FLOW_CHILDREN", "1000"))
LAT_SAMPLES = int(os.environ.get("BENCH_LAT_SAMPLES", "500"))
LAT_WARMUP = int(os.environ.get("BENCH_LAT_WARMUP", "10"))
LAT_GAP_S = float(os.environ.get("BENCH_LAT_GAP_MS", "10")) / 1000
CASE_DEADLINE_S = float(os.environ.get("BENCH_CASE_DEADLINE_S", "280"))
W5_FLOWS = int(os.environ.get("BENCH_W5_FLOWS", "200"))
W5_CHILDREN = int(os.environ.get("BENCH_W5_CHILDREN", "10"))
W5_WORKERS = int(os.environ.get("BENCH_W5_WORKERS", "2"))
W5_CONCURRENCY = int(os.environ.get("BENCH_W5_CONCURRENCY", "10"))

CASES = [
    "W1.add",
    "W1.add.enqueue",
    "W1.add.tasks",
    "W1.add.taskjob",
    "W1.bulk",
    "W2.c1",
    "W2.c50",
    "W2.c50.p2",
    "W2.cpu.p1",
    "W2.cpu.p2",
    "W2.c1.sync",
    "W2.c50.sync",
    "W2.c1.runworker",
    "W2.c50.runworker",
    "W2.c50.p2.runworker",
    "W6.orm.runworker",
    "W3.flow",
    "W4.latency",
    "W4.latency.sync",
    "W5.flows",
]

PAD = "x" * 72


def payload(i: int) -> dict[str, Any]:
    """~200 bytes of compact JSON; the same shape as the harness's payload()."""
    return {
        "seq": i,
        "tenant": "acme-corp",
        "user": f"user-{i:06d}",
        "email": f"user-{i:06d}@example.com",
        "action": "send_welcome_email",
        "pad": PAD,
    }


def emit(case: str, metric: str, value: object) -> None:
    if isinstance(value, float):
        value = f"{value:.6g}" if abs(value) < 1e6 else f"{value:.0f}"
    print(f"{NAME} {case} {metric} {value}", flush=True)


def log(*args: object) -> None:
    print(*args, file=sys.stderr, flush=True)


def pct(values: list[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100), as in the harness."""
    s = sorted(values)
    if not s:
        return float("nan")
    k = max(0, min(len(s) - 1, math.ceil(p / 100.0 * len(s)) - 1))
    return s[k]


def now_ms() -> float:
    return time.time() * 1000.0


def key(suffix: str, queue: str = QUEUE) -> str:
    return f"{PREFIX}:{queue}:{suffix}"


def aux_key(name: str) -> str:
    """The harness's own signalling keys, under the prefix so a shared Redis can be cleaned."""
    return f"{PREFIX}:bench-aux:{name}"


class Deadline:
    def __init__(self, seconds: float = CASE_DEADLINE_S) -> None:
        self.t_end = time.monotonic() + seconds

    def left(self) -> float:
        return self.t_end - time.monotonic()

    def check(self, what: str = "case") -> None:
        if self.left() <= 0:
            raise TimeoutError(f"{what} exceeded its deadline")


def sync_redis() -> redis.Redis:
    return redis.Redis.from_url(REDIS_URL, decode_responses=True)


def new_queue(name: str = QUEUE) -> Queue:
    return Queue(name, connection=REDIS_URL, prefix=PREFIX)


def new_worker(processor: Callable[..., Any], concurrency: int) -> Worker:
    return Worker(
        QUEUE,
        processor,
        connection=REDIS_URL,
        prefix=PREFIX,
        concurrency=concurrency,
        autorun=True,
    )


async def noop_async(job: Any) -> None:
    return None


def noop_sync(job: Any) -> None:
    return None


CPU_JOB_S = float(os.environ.get("BENCH_CPU_JOB_MS", "0.5")) / 1000


async def cpu_async(job: Any) -> None:
    """Holds the interpreter for BENCH_CPU_JOB_MS [0.5] ms, as a job doing real
    Python work would: what several worker processes are for."""
    end = time.perf_counter() + CPU_JOB_S
    while time.perf_counter() < end:
        pass


PROCESSORS: dict[str, Callable[..., Any]] = {"noop": noop_async, "cpu": cpu_async}


def bulk_specs(start: int, stop: int) -> list[dict[str, Any]]:
    return [{"name": "job", "data": payload(i)} for i in range(start, stop)]


def prefill(n: int, queue: str = QUEUE) -> None:
    q = new_queue(queue)
    for start in range(0, n, BULK_CHUNK):
        q.add_bulk(bulk_specs(start, min(n, start + BULK_CHUNK)))
    q.close()


def wait_completed(r: redis.Redis, count: int, dl: Deadline, queue: str = QUEUE) -> None:
    """Poll the completed set (cheap: one ZCARD every 10 ms) until it holds count jobs."""
    while r.zcard(key("completed", queue)) < count:
        if r.zcard(key("failed", queue)):
            raise RuntimeError(f"jobs failed: {r.zrange(key('failed', queue), 0, 4)}")
        dl.check("waiting for completions")
        time.sleep(0.01)


def finished_event(worker: Worker, count: int) -> threading.Event:
    """Set once `worker` has completed `count` jobs, or failed one (the caller checks
    Redis afterwards). How Node's harness waits (its worker's 'completed' events): a
    poll of Redis from this thread took the GIL from the worker's thread 100 times a
    second, 3% of a one-job-at-a-time drain."""
    finished = threading.Event()
    completed = itertools.count(1)
    worker.on("completed", lambda *_: next(completed) >= count and finished.set())
    worker.on("failed", lambda *_: finished.set())
    return finished


def span_ms(r: redis.Redis, job_ids: list[str]) -> tuple[float, float]:
    """(first processedOn, last finishedOn) from the engine's own job records."""
    pipe = r.pipeline(transaction=False)
    for jid in job_ids:
        pipe.hget(key(jid), "processedOn")
    starts = [int(x) for x in pipe.execute() if x is not None]
    last = r.zrange(key("completed"), -1, -1, withscores=True)
    return min(starts), last[0][1]


def warm_up(q: Queue) -> None:
    """Connect and load scripts before timing (the anchors ping first too)."""
    q.get_job_counts("waiting")


def w1_add() -> None:
    q = new_queue()
    warm_up(q)
    dl = Deadline()
    t0 = time.perf_counter()
    for i in range(N_JOBS):
        q.add("job", payload(i))
        if i % 1000 == 0:
            dl.check()
    dt = time.perf_counter() - t0
    q.close()
    emit("W1.add", "jobs_per_s", N_JOBS / dt)


def w1_add_django(case: str) -> None:
    """W1.add through the Django layer, one by one: `flowjobs.enqueue.enqueue()` (.enqueue),
    django.tasks' `Task.enqueue()` on the FlowJobsBackend (.tasks) or `Queue.add` of the job
    that makes (.taskjob), on bench_site with its default settings (no enqueue on commit)."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="flowjobs-bench-site-") as site_dir:
        os.environ.update(site_env(site_dir))
        sys.path[:0] = [BENCH_DIR, REPO_DIR]
        import django

        django.setup()
        from flowjobs.enqueue import enqueue

        warm_up(new_queue())
        if case == "W1.add.tasks":
            from bench_site.tasks import record

            def add(i: int) -> None:
                record.enqueue(**payload(i))
        elif case == "W1.add.taskjob":
            # Queue.add of the job Task.enqueue makes (its queue's default options, a
            # priority, a UUID id from the backend's own source, the task's data): what
            # .tasks adds beyond it is the django.tasks layer's own cost
            from bench_site.tasks import record

            from flowjobs import conf
            from flowjobs.tasks.backend import TASK_IDS
            from flowjobs.tasks.results import to_bullmq_priority

            task_queue = conf.get_queue(record.queue_name)
            priority = to_bullmq_priority(record.priority)

            def add(i: int) -> None:
                data = {"args": [], "kwargs": payload(i), "backend": "default"}
                job_id = TASK_IDS.new()
                task_queue.add(record.module_path, data, priority=priority, job_id=job_id)
        else:

            def add(i: int) -> None:
                enqueue(QUEUE, "job", payload(i))

        add(-1)  # the first call connects and loads the script
        dl = Deadline()
        t0 = time.perf_counter()
        for i in range(N_JOBS):
            add(i)
            if i % 1000 == 0:
                dl.check()
        dt = time.perf_counter() - t0
    emit(case, "jobs_per_s", N_JOBS / dt)


def w1_bulk() -> None:
    q = new_queue()
    warm_up(q)
    t0 = time.perf_counter()
    for start in range(0, N_JOBS, BULK_CHUNK):
        q.add_bulk(bulk_specs(start, min(N_JOBS, start + BULK_CHUNK)))
    dt = time.perf_counter() - t0
    q.close()
    emit("W1.bulk", "jobs_per_s", N_JOBS / dt)


def w2(concurrency: int, case: str, processor: Callable[..., Any]) -> None:
    prefill(N_JOBS)
    r = sync_redis()
    dl = Deadline()
    w = new_worker(processor, concurrency)
    finished = finished_event(w, N_JOBS)
    try:
        if not finished.wait(dl.left()):
            raise RuntimeError(f"deadline: {r.zcard(key('completed'))} jobs completed")
    finally:
        w.close()
    failed = r.zcard(key("failed"))
    ids = r.zrange(key("completed"), 0, -1)
    if failed or len(ids) != N_JOBS:
        raise RuntimeError(f"completed={len(ids)} failed={failed}")
    t_first, t_last = span_ms(r, ids)
    emit(case, "jobs_per_s", N_JOBS / ((t_last - t_first) / 1000.0))


def flow_producer() -> Any:
    from flowjobs.engine import FlowProducer

    return FlowProducer(connection=REDIS_URL, prefix=PREFIX)


def flow_spec(seq: int, n_children: int) -> dict[str, Any]:
    children = [
        {"name": "child", "queue_name": QUEUE, "data": payload(seq + i)}
        for i in range(1, n_children + 1)
    ]
    return {
        "name": "parent",
        "queue_name": QUEUE,
        "data": payload(seq),
        "children": children,
    }


def w3_flow() -> None:
    fp = flow_producer()
    spec = flow_spec(0, FLOW_CHILDREN)
    t0 = time.perf_counter()
    tree = fp.add(spec)
    create_s = time.perf_counter() - t0
    fp.close()
    parent_id = str(tree.job.id)
    r = sync_redis()
    dl = Deadline()
    w = new_worker(noop_async, 1)
    try:
        while r.hget(key(parent_id), "finishedOn") is None:
            dl.check("waiting for the parent")
            time.sleep(0.01)
    finally:
        w.close()
    ids = r.zrange(key("completed"), 0, -1)
    if len(ids) != FLOW_CHILDREN + 1:
        raise RuntimeError(f"completed {len(ids)} of {FLOW_CHILDREN + 1}")
    t_first, _ = span_ms(r, ids)
    t_parent = float(r.hget(key(parent_id), "finishedOn"))
    emit("W3.flow", "create_s", create_s)
    emit("W3.flow", "done_s", (t_parent - t_first) / 1000.0)


def wait_for_sigterm() -> None:
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    while not stop.wait(0.5):
        pass


def latency_worker(style: str) -> None:
    """Runs in a subprocess: an idle worker; the processor reports add-to-start."""
    if style == "sync":
        sr = sync_redis()

        def processor(job: Any) -> None:
            lat = now_ms() - float(job.data["t_add_ms"])
            sr.rpush(aux_key("lat"), repr(lat))

    else:
        import redis.asyncio as aredis

        clients: dict[int, Any] = {}

        async def processor(job: Any) -> None:
            lat = now_ms() - float(job.data["t_add_ms"])
            # One client per event loop, made on the worker's loop at first use.
            loop_id = id(asyncio.get_running_loop())
            ar = clients.get(loop_id)
            if ar is None:
                ar = clients[loop_id] = aredis.Redis.from_url(REDIS_URL)
            await ar.rpush(aux_key("lat"), repr(lat))

    w = new_worker(processor, 1)
    time.sleep(0.2)
    sync_redis().set(aux_key("ready"), "1")
    wait_for_sigterm()
    w.close()


def stop_subprocess(proc: subprocess.Popen[bytes] | None, term_wait: float = 10.0) -> None:
    """Stop a worker subprocess this harness started (by its own pid)."""
    if proc is None or proc.poll() is not None:
        return
    try:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=term_wait)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


def wait_ready(r: redis.Redis, name: str, timeout_s: float = 60.0) -> None:
    t_end = time.monotonic() + timeout_s
    while time.monotonic() < t_end:
        if r.get(name):
            return
        time.sleep(0.02)
    raise TimeoutError(f"worker did not signal {name} within {timeout_s}s")


def w4_latency(style: str, case: str) -> None:
    r = sync_redis()
    me = os.path.abspath(__file__)
    proc = subprocess.Popen([sys.executable, me, "latency-worker", style])
    lats: list[float] = []
    try:
        wait_ready(r, aux_key("ready"))
        q = new_queue()
        warm_up(q)
        dl = Deadline()
        for i in range(LAT_WARMUP + LAT_SAMPLES):
            dl.check()
            data = payload(i)
            data["t_add_ms"] = now_ms()
            job = q.add("lat", data)
            got = r.blpop(aux_key("lat"), timeout=10)
            if got is None:
                raise TimeoutError("no latency report within 10s")
            if i >= LAT_WARMUP:
                lats.append(float(got[1]))
            # wait until the job is recorded as completed, then let the worker idle
            while r.zscore(key("completed"), str(job.id)) is None:
                dl.check()
                time.sleep(0.001)
            time.sleep(LAT_GAP_S)
        q.close()
    finally:
        stop_subprocess(proc)
    emit(case, "p50_ms", pct(lats, 50))
    emit(case, "p99_ms", pct(lats, 99))


def worker_process(idx: str, concurrency: int, processor: str = "noop") -> None:
    """Runs in a subprocess: a worker that signals `ready:<idx>` once it runs."""
    w = new_worker(PROCESSORS[processor], concurrency)
    time.sleep(0.2)
    sync_redis().set(aux_key(f"ready:{idx}"), "1")
    wait_for_sigterm()
    w.close()


def start_worker_processes(
    r: redis.Redis, count: int, concurrency: int, processor: str = "noop"
) -> list:
    me = os.path.abspath(__file__)
    procs = [
        subprocess.Popen(
            [sys.executable, me, "worker-process", str(i), str(concurrency), processor]
        )
        for i in range(count)
    ]
    try:
        for i in range(count):
            wait_ready(r, aux_key(f"ready:{i}"))
    except BaseException:
        for p in procs:
            stop_subprocess(p)
        raise
    return procs


def w2_processes(processes: int, concurrency: int, case: str, processor: str = "noop") -> None:
    """W2 with several worker processes (as `runworker --processes N` runs them): the
    queue is paused while it fills and the processes start, then resumed."""
    r = sync_redis()
    q = new_queue()
    q.pause()
    prefill(N_JOBS)
    procs = start_worker_processes(r, processes, concurrency, processor)
    try:
        dl = Deadline()
        q.resume()
        wait_completed(r, N_JOBS, dl)
    finally:
        for p in procs:
            stop_subprocess(p)
        q.close()
    emit_drain_rate(r, case)


# bench/run runs a copy of this file from its scratch harness: find bench_site in the repo
REPO_DIR = os.environ.get("FLOWJOBS_SRC") or os.path.dirname(
    os.path.dirname(os.path.abspath(__file__))
)
BENCH_DIR = os.path.join(REPO_DIR, "bench")


def site_env(site_dir: str) -> dict[str, str]:
    """The environment of `manage.py` commands on bench/bench_site (default settings)."""
    path = [BENCH_DIR, REPO_DIR, os.environ.get("PYTHONPATH", "")]
    return dict(
        os.environ,
        DJANGO_SETTINGS_MODULE="bench_site.settings",
        PYTHONPATH=os.pathsep.join(p for p in path if p),
        REDIS_URL=REDIS_URL,
        BENCH_PREFIX=PREFIX,
        BENCH_SITE_DIR=site_dir,
    )


def mirror_position(site_dir: str, database_url: str | None, queue: str) -> str | None:
    """The mirror's position in `queue`'s events stream, read from the site's database
    (bench_site: its SQLite file, or DATABASE_URL)."""
    sql = "SELECT last_id FROM flowjobs_streamposition WHERE prefix = {0} AND queue = {0}"
    try:
        if database_url:
            import psycopg

            with psycopg.connect(database_url) as db:
                row = db.execute(sql.format("%s"), (PREFIX, queue)).fetchone()
        else:
            import sqlite3

            with sqlite3.connect(os.path.join(site_dir, "bench.sqlite3")) as db:
                row = db.execute(sql.format("?"), (PREFIX, queue)).fetchone()
    except Exception:  # noqa: BLE001 - the table appears with the first position
        return None
    return row[0] if row else None


def wait_for_mirror(r: redis.Redis, site_dir: str, env: dict[str, str], queue: str) -> None:
    """Waits until runworker's mirror has applied every event of `queue` so far (the
    prefill's): the drain then measures runworker as it runs after start-up, its services
    process booted and the mirror following only the drain's own events."""
    if env.get("FLOWJOBS_MIRROR", "true").lower() in ("false", "0", "no", "off"):
        return
    last = r.xrevrange(key("events", queue), count=1)
    if not last:
        return
    target = last[0][0].decode() if isinstance(last[0][0], bytes) else last[0][0]
    dl = Deadline()
    while True:
        position = mirror_position(site_dir, env.get("DATABASE_URL"), queue)
        if position is not None and tuple(map(int, position.split("-"))) >= tuple(
            map(int, target.split("-"))
        ):
            return
        dl.check("waiting for the mirror to catch up with the prefill")
        time.sleep(0.05)


def worker_connections(r: redis.Redis) -> int:
    """runworker processes connected to the bench queue (named `<prefix>:<queue>:w:...`)."""
    return sum(":w:" in (c.get("name") or "") for c in r.client_list())


def w2_runworker(processes: int, concurrency: int, case: str) -> None:
    """W2 as Django users run it: `manage.py runworker` with the site's default settings
    (mirror on, runworker's own logging) and a plain `def` processor."""
    r = sync_redis()
    runworker_drain(r, QUEUE, N_JOBS, processes, concurrency)
    emit_drain_rate(r, case)


def w6_orm_runworker() -> None:
    """W6: one ORM insert per job (bench_site's `Row`) on PostgreSQL, runworker with the
    default settings and persistent connections, BENCH_W6_CONCURRENCY jobs at a time.
    jobs_per_s from the rows' own timestamps (the database's clock), first to last."""
    if BENCH_DIR not in sys.path:
        sys.path.insert(0, BENCH_DIR)
    from bench_site import w6

    with w6.throwaway_database("flowjobs_bench_w6") as database_url:
        runworker_drain(
            sync_redis(),
            "bench-orm",
            w6.N_JOBS,
            w6.PROCESSES,
            w6.CONCURRENCY,
            {"DATABASE_URL": database_url},
        )
        log(f"W6.orm.runworker: {w6.sessions_opened(database_url)} database sessions opened")
        emit("W6.orm.runworker", "jobs_per_s", w6.rows_per_second(database_url, w6.N_JOBS))


def runworker_drain(
    r: redis.Redis,
    queue: str,
    count: int,
    processes: int,
    concurrency: int,
    extra_env: dict[str, str] | None = None,
) -> None:
    """Fills `queue` with `count` jobs while it is paused, starts `manage.py runworker`
    on bench_site, resumes the queue once the workers are connected and the mirror has
    applied the prefill's events, and stops runworker when every job completed."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="flowjobs-bench-site-") as site_dir:
        env = {**site_env(site_dir), **(extra_env or {})}
        django = [sys.executable, "-m", "django"]
        # cwd: `python -m` puts it first on the path, before the checkout under test
        subprocess.run(
            [*django, "migrate", "--run-syncdb", "-v", "0"], env=env, cwd=site_dir, check=True
        )
        q = new_queue(queue)
        q.pause()
        prefill(count, queue)
        command = [*django, "runworker", queue, "--concurrency", str(concurrency)]
        if processes > 1:
            command += ["--processes", str(processes)]
        with open(os.path.join(site_dir, "runworker.log"), "w") as log_file:
            proc = subprocess.Popen(
                command, env=env, cwd=site_dir, stderr=log_file, stdout=log_file
            )
            try:
                dl = Deadline()
                while worker_connections(r) < processes:
                    if proc.poll() is not None:
                        raise RuntimeError(f"runworker exited with {proc.returncode}")
                    dl.check("waiting for runworker")
                    time.sleep(0.02)
                wait_for_mirror(r, site_dir, env, queue)
                q.resume()
                wait_completed(r, count, dl, queue)
            finally:
                stop_subprocess(proc, term_wait=30)
                q.close()


def emit_drain_rate(r: redis.Redis, case: str) -> None:
    """Checks that all N_JOBS jobs completed, and emits their rate from the jobs' own
    first processedOn to last finishedOn."""
    ids = r.zrange(key("completed"), 0, -1)
    if r.zcard(key("failed")) or len(ids) != N_JOBS:
        raise RuntimeError(f"completed={len(ids)} failed={r.zcard(key('failed'))}")
    t_first, t_last = span_ms(r, ids)
    emit(case, "jobs_per_s", N_JOBS / ((t_last - t_first) / 1000.0))


def w5_flows() -> None:
    """W5: W5_FLOWS flows (parent + W5_CHILDREN children, one queue) added one by one
    while W5_WORKERS idle worker processes (concurrency W5_CONCURRENCY each) run.
    done_s: from just before the first add to the last parent's finishedOn."""
    r = sync_redis()
    procs = start_worker_processes(r, W5_WORKERS, W5_CONCURRENCY)
    try:
        fp = flow_producer()
        specs = [flow_spec(f * 100, W5_CHILDREN) for f in range(W5_FLOWS)]
        dl = Deadline()
        t0_ms = now_ms()
        t0 = time.perf_counter()
        parent_ids = [str(fp.add(spec).job.id) for spec in specs]
        create_s = time.perf_counter() - t0
        fp.close()
        wait_completed(r, W5_FLOWS * (W5_CHILDREN + 1), dl)
    finally:
        for p in procs:
            stop_subprocess(p)
    pipe = r.pipeline(transaction=False)
    for pid in parent_ids:
        pipe.hget(key(pid), "finishedOn")
    finished = [float(x) for x in pipe.execute() if x is not None]
    if len(finished) != W5_FLOWS:
        raise RuntimeError(f"{len(finished)} of {W5_FLOWS} parents finished")
    emit("W5.flows", "create_s", create_s)
    emit("W5.flows", "done_s", (max(finished) - t0_ms) / 1000.0)


def has_flow_producer() -> bool:
    try:
        from flowjobs.engine import FlowProducer  # noqa: F401
    except ImportError:
        return False
    return True


def available_cases() -> list[str]:
    """The flow cases need FlowProducer (issue 3); leave them out until it exists."""
    if has_flow_producer():
        return list(CASES)
    return [c for c in CASES if not c.startswith(("W3.", "W5."))]


def version_string() -> str:
    from importlib.metadata import PackageNotFoundError, version

    import flowjobs
    import flowjobs.engine

    fj = getattr(flowjobs, "__version__", None)
    if fj is None:
        engine_dir = os.path.dirname(os.path.abspath(flowjobs.engine.__file__))
        out = subprocess.run(
            ["git", "-C", engine_dir, "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
            check=False,
        )
        fj = "git-" + (out.stdout.strip() or "unknown")
    parts = [f"flowjobs={fj}", f"python={sys.version.split()[0]}"]
    for dist in ("redis", "hiredis"):
        try:
            parts.append(
                f"{dist}-py={version(dist)}" if dist == "redis" else f"{dist}={version(dist)}"
            )
        except PackageNotFoundError:
            parts.append(f"{dist}=none")
    return ",".join(parts)


def main(argv: list[str]) -> int:
    cmd = argv[1] if len(argv) > 1 else "cases"
    if cmd == "cases":
        print("\n".join(available_cases()))
        return 0
    if cmd == "version":
        emit("info", "version", version_string())
        return 0
    if cmd == "latency-worker":
        latency_worker(argv[2] if len(argv) > 2 else "async")
        return 0
    if cmd == "worker-process":
        worker_process(argv[2], int(argv[3]), *argv[4:5])
        return 0
    if cmd != "run" or len(argv) < 3:
        raise SystemExit(__doc__)
    cases: dict[str, Callable[[], None]] = {
        "W1.add": w1_add,
        "W1.add.enqueue": lambda: w1_add_django("W1.add.enqueue"),
        "W1.add.tasks": lambda: w1_add_django("W1.add.tasks"),
        "W1.add.taskjob": lambda: w1_add_django("W1.add.taskjob"),
        "W1.bulk": w1_bulk,
        "W2.c1": lambda: w2(1, "W2.c1", noop_async),
        "W2.c50": lambda: w2(50, "W2.c50", noop_async),
        "W2.c50.p2": lambda: w2_processes(2, 50, "W2.c50.p2"),
        "W2.cpu.p1": lambda: w2_processes(1, 50, "W2.cpu.p1", "cpu"),
        "W2.cpu.p2": lambda: w2_processes(2, 50, "W2.cpu.p2", "cpu"),
        "W2.c1.sync": lambda: w2(1, "W2.c1.sync", noop_sync),
        "W2.c50.sync": lambda: w2(50, "W2.c50.sync", noop_sync),
        "W2.c1.runworker": lambda: w2_runworker(1, 1, "W2.c1.runworker"),
        "W2.c50.runworker": lambda: w2_runworker(1, 50, "W2.c50.runworker"),
        "W2.c50.p2.runworker": lambda: w2_runworker(2, 50, "W2.c50.p2.runworker"),
        "W6.orm.runworker": w6_orm_runworker,
        "W3.flow": w3_flow,
        "W4.latency": lambda: w4_latency("async", "W4.latency"),
        "W4.latency.sync": lambda: w4_latency("sync", "W4.latency.sync"),
        "W5.flows": w5_flows,
    }
    case = argv[2]
    if case not in cases:
        raise SystemExit(f"unknown case {case}")
    cases[case]()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
