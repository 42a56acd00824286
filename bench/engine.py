"""flowjobs-only benchmark: one table of W1-W5 numbers for this checkout's engine.

usage: .venv/bin/python bench/engine.py

Starts a private redis-server on a free port (`--save "" --appendonly no`) and stops it at
the end, or uses REDIS_URL if given (then every case gets its own key prefix, deleted
afterwards, instead of a FLUSHALL). Each case runs in a fresh process
(bench/flowjobs_bench.py, the same program bench/run uses as the harness's flowjobs
contestant), so the numbers here and in bench/run are measured the same way:

  W1.add       20,000 adds one at a time (awaited), jobs/s
  W1.bulk      20,000 adds in add_bulk chunks of 1,000, jobs/s
  W2.c1/c50    20,000 pre-enqueued no-op jobs, one Worker at concurrency 1 / 50, jobs/s from
               the first job's processedOn to the last job's finishedOn (read from Redis);
               async processor, and `.sync` = plain def processor (thread pool)
  W3.flow      one parent + 1,000 children: the FlowProducer.add call, and first child start
               to parent finishedOn with one worker at concurrency 1 (n/a without FlowProducer)
  W4.latency   add-to-start p50/p99 with an idle worker, 500 samples (+10 warm-up) measured
               inside the processor against t_add_ms in the job data
  W2.c50.p2    the same with 2 worker processes; W2.cpu.p1/p2: jobs of 0.5 ms CPU, 1 and 2
               worker processes (what `runworker --processes` is for)
  W5.flows     200 flows of 10 children added one by one while 2 worker processes run

Environment: REPEATS [1] (medians over rounds), CASES [.] (regex on case ids),
CASE_TIMEOUT [420] s, REDIS_URL, and the sizes BENCH_N [20000], BENCH_BULK_CHUNK [1000],
BENCH_FLOW_CHILDREN [1000], BENCH_LAT_SAMPLES [500], BENCH_LAT_WARMUP [10],
BENCH_LAT_GAP_MS [10], BENCH_W5_FLOWS [200], BENCH_W5_CHILDREN [10], BENCH_W5_WORKERS [2],
BENCH_W5_CONCURRENCY [10]. Quick run: BENCH_N=2000 BENCH_LAT_SAMPLES=50 bench/engine.py
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager

import redis

BENCH = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCH)
PROGRAM = os.path.join(BENCH, "flowjobs_bench.py")
ALL_CASES = [
    "W1.add",
    "W1.bulk",
    "W2.c1",
    "W2.c50",
    "W2.c1.sync",
    "W2.c50.sync",
    "W2.c50.p2",
    "W2.cpu.p1",
    "W2.cpu.p2",
    "W3.flow",
    "W4.latency",
    "W4.latency.sync",
    "W5.flows",
]
METRICS = {
    "W1": ["jobs_per_s"],
    "W2": ["jobs_per_s"],
    "W3": ["create_s", "done_s"],
    "W4": ["p50_ms", "p99_ms"],
    "W5": ["create_s", "done_s"],
}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def private_redis() -> Iterator[str]:
    """A redis-server of our own on a free port; yields its URL."""
    exe = shutil.which("redis-server")
    if exe is None:
        raise SystemExit("redis-server not found (apt-get install redis-server), or set REDIS_URL")
    workdir = tempfile.mkdtemp(prefix="flowjobs-bench-redis-")
    port = free_port()
    args = [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    proc = subprocess.Popen(
        [*args, "--dir", workdir], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    url = f"redis://127.0.0.1:{port}/0"
    try:
        client = redis.Redis.from_url(url)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise SystemExit(f"redis-server on port {port} did not start") from None
                time.sleep(0.05)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(workdir, ignore_errors=True)


@contextmanager
def bench_redis() -> Iterator[tuple[str, bool]]:
    """(url, given): REDIS_URL if set, else a private redis-server for the duration."""
    given = os.environ.get("REDIS_URL")
    if given:
        yield given, True
        return
    with private_redis() as url:
        yield url, False


def delete_prefix(client: redis.Redis, prefix: str) -> None:
    batch = []
    for k in client.scan_iter(match=f"{prefix}:*", count=1000):
        batch.append(k)
        if len(batch) >= 1000:
            client.delete(*batch)
            batch.clear()
    if batch:
        client.delete(*batch)


def child_env(url: str, prefix: str) -> dict[str, str]:
    env = dict(os.environ)
    env["REDIS_URL"] = url
    env["BENCH_PREFIX"] = prefix
    env["PYTHONPATH"] = REPO + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def available_cases(url: str) -> list[str]:
    out = subprocess.run(
        [sys.executable, PROGRAM, "cases"],
        env=child_env(url, "bull"),
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode != 0:
        sys.stderr.write(out.stderr)
        raise SystemExit("bench/flowjobs_bench.py cannot start: is flowjobs.engine importable?")
    return out.stdout.split()


def version(url: str) -> str:
    out = subprocess.run(
        [sys.executable, PROGRAM, "version"],
        env=child_env(url, "bull"),
        capture_output=True,
        text=True,
        check=False,
    )
    fields = out.stdout.split()
    return fields[3] if len(fields) == 4 else "unknown"


def run_case(
    url: str, case: str, prefix: str, timeout_s: float
) -> tuple[dict[str, float], str | None]:
    """Runs one case in a fresh process; returns ({metric: value}, error or None)."""
    try:
        out = subprocess.run(
            [sys.executable, PROGRAM, "run", case],
            env=child_env(url, prefix),
            stdout=subprocess.PIPE,
            text=True,
            timeout=timeout_s,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return {}, f"TIMEOUT({timeout_s:.0f}s)"
    values = {}
    for line in out.stdout.splitlines():
        fields = line.split()
        if len(fields) == 4 and fields[1] == case:
            values[fields[2]] = float(fields[3])
    return values, None if out.returncode == 0 else f"FAIL(rc={out.returncode})"


def fmt(v: float) -> str:
    if v >= 1000:
        return f"{v:,.0f}"
    if v >= 10:
        return f"{v:.1f}"
    return f"{v:.3g}"


def print_table(rows: list[tuple[str, ...]], header: tuple[str, ...]) -> None:
    """Plain-text table; the value column (index 3) is right-aligned."""
    widths = [max(len(header[i]), *(len(r[i]) for r in rows)) for i in range(len(header))]
    for r in [header, tuple("-" * w for w in widths), *rows]:
        cells = (
            s.rjust(w) if i == 3 else s.ljust(w)
            for i, (s, w) in enumerate(zip(r, widths, strict=True))
        )
        print("  ".join(cells).rstrip())


def machine() -> str:
    model = ""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{os.cpu_count()} cores {model}, {platform.system()} {platform.release()}"


def main() -> int:
    repeats = int(os.environ.get("REPEATS", "1"))
    case_re = re.compile(os.environ.get("CASES", "."))
    timeout_s = float(os.environ.get("CASE_TIMEOUT", "420"))
    os.environ.setdefault("BENCH_CASE_DEADLINE_S", str(max(10.0, timeout_s - 30)))
    with bench_redis() as (url, given):
        client = redis.Redis.from_url(url)
        runnable = set(available_cases(url))
        cases = [c for c in ALL_CASES if case_re.search(c)]
        server = client.info("server")
        print(f"# flowjobs: {version(url)}")
        print(f"# redis {server['redis_version']} at {url} ({'given' if given else 'private'})")
        print(f"# machine: {machine()}; python {platform.python_version()}")
        sizes = " ".join(
            f"{k}={os.environ[k]}" for k in sorted(os.environ) if k.startswith("BENCH_")
        )
        print(f"# REPEATS={repeats} {sizes or '(default sizes)'}")
        results: dict[tuple[str, str], list[float]] = {}
        errors: dict[str, list[str]] = {}
        n = 0
        for rep in range(1, repeats + 1):
            for case in cases:
                if case not in runnable:
                    continue
                n += 1
                prefix = "bull" if not given else f"fjbench{os.getpid()}x{n}"
                if not given:
                    client.flushall()
                t0 = time.monotonic()
                values, err = run_case(url, case, prefix, timeout_s)
                if given:
                    delete_prefix(client, prefix)
                shown = " ".join(f"{m}={fmt(v)}" for m, v in values.items())
                print(
                    f"[rep {rep}/{repeats}] {case:<16} {time.monotonic() - t0:6.1f}s "
                    f"{err or ''} {shown}",
                    file=sys.stderr,
                    flush=True,
                )
                for metric, value in values.items():
                    results.setdefault((case, metric), []).append(value)
                if err:
                    errors.setdefault(case, []).append(err)
    rows = []
    for case in cases:
        for metric in METRICS[case.split(".")[0]]:
            vals = results.get((case, metric))
            value, note = "-", ""
            if case not in runnable:
                value, note = "n/a", "FlowProducer not available yet"
            elif not vals:
                value = " ".join(errors.get(case, ["-"]))
            else:
                value = fmt(statistics.median(vals))
                if len(vals) > 1:
                    note = f"{fmt(min(vals))} .. {fmt(max(vals))} (n={len(vals)})"
            rows.append((case, "flowjobs", metric, value, note))
    print_table(rows, ("workload", "contestant", "metric", "value", "min .. max / note"))
    if errors:
        print("errors: " + "; ".join(f"{c}: {', '.join(e)}" for c, e in errors.items()))
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
