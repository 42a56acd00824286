"""Where one drain's CPU goes: each process's CPU a job, Redis's, and Redis's commands.

usage: .venv/bin/python bench/drain.py [CASE] [--rounds K] [--stop-services]

Runs CASE (default W2.c50.runworker; any W2 case of bench/flowjobs_bench.py) K times
(default 3) on a private redis-server, a fresh FLUSHALL each. From the first completed job
to the last it reads, from /proc, the CPU of each runworker process (its workers and its
background-services process: the mirror, the outbox relay) or, for the engine cases, of
the bench process that runs the Worker, and of Redis, and Redis's command statistics
(reset at the first completion). It prints them per job with the drain's rate.

--stop-services SIGSTOPs runworker's services process for the drain (SIGCONT after it):
what the mirror and the relay cost the drain. The rate printed is the drain's own (this
script's clock), not the case's jobs_per_s line (the jobs' timestamps), which it also
prints. Environment: BENCH_N [20000]. The same view of a Node BullMQ drain, on the same
Redis: `NODE_PATH=tests/interop/node_modules REDIS_PORT=P node
bench/anchors_extra/drain_bullmq_node.cjs [CONCURRENCY]`.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time

import redis
from ab import process_cpu_s  # bench/ab.py, beside this script
from engine import child_env, private_redis  # bench/engine.py, beside this script

BENCH = os.path.dirname(os.path.abspath(__file__))
PREFIX = "bull"
QUEUE = "bench"


def runworker_processes() -> dict[int, str]:
    """{pid: "worker" | "services"} of every running `manage.py runworker` process."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as fh:
                argv = fh.read().split(b"\0")
        except OSError:
            continue
        if b"runworker" in argv and not any(arg.endswith(b"flowjobs_bench.py") for arg in argv):
            found[int(entry)] = "services" if b"--services" in argv else "worker"
    return found


def wait_until(condition, what: str, bench: subprocess.Popen, timeout: float = 600) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while not condition():
        if bench.poll() is not None:
            raise SystemExit(f"the bench exited while {what}:\n{bench.stderr.read()[-3000:]}")
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out {what}")
        time.sleep(0.005)


def one_drain(url: str, case: str, jobs: int, stop_services: bool) -> None:
    client = redis.Redis.from_url(url, decode_responses=True)
    client.flushall()
    redis_pid = int(client.info("server")["process_id"])
    env = child_env(url, PREFIX)
    env["BENCH_N"] = str(jobs)
    bench = subprocess.Popen(
        [sys.executable, os.path.join(BENCH, "flowjobs_bench.py"), "run", case],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    completed = f"{PREFIX}:{QUEUE}:completed"
    wait_until(lambda: client.zcard(completed) > 0, "waiting for the first job", bench)
    processes = runworker_processes() or {bench.pid: "bench process"}
    stopped = [pid for pid, role in processes.items() if role == "services" and stop_services]
    for pid in stopped:
        os.kill(pid, signal.SIGSTOP)
    client.config_resetstat()
    first, started = client.zcard(completed), time.monotonic()
    cpu = {pid: process_cpu_s(pid) for pid in processes}
    redis_cpu = process_cpu_s(redis_pid)
    try:
        wait_until(lambda: client.zcard(completed) >= jobs, "draining", bench)
    finally:
        for pid in stopped:
            os.kill(pid, signal.SIGCONT)
    drained, seconds = jobs - first, time.monotonic() - started
    spent = {pid: process_cpu_s(pid) - cpu[pid] for pid in processes}
    redis_spent = process_cpu_s(redis_pid) - redis_cpu
    stats = client.info("commandstats")
    out, err = bench.communicate(timeout=600)
    print(f"{case}: {drained:,} jobs drained at {drained / seconds:,.0f} jobs/s")
    for pid, role in sorted(processes.items(), key=lambda item: item[1]):
        note = " (stopped)" if pid in stopped else ""
        print(f"  {role} {pid}{note}: {spent[pid] / drained * 1e6:.1f} µs of CPU a job")
    print(f"  redis-server: {redis_spent / drained * 1e6:.1f} µs of CPU a job")
    commands = sorted(
        (
            (stat["usec"] / drained, stat["calls"] / drained, name[len("cmdstat_") :])
            for name, stat in stats.items()
        ),
        reverse=True,
    )
    total = sum(usec for usec, _calls, _name in commands)
    print(f"  Redis commands: {total:.1f} µs a job; the costliest:")
    for usec, calls, name in commands[:12]:
        print(f"    {name:20} {usec:7.2f} µs {calls:6.3f} calls a job")
    print("  " + (out.strip().splitlines() or [f"no result: {err[-500:]}"])[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("case", nargs="?", default="W2.c50.runworker")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--stop-services", action="store_true")
    options = parser.parse_args()
    jobs = int(os.environ.get("BENCH_N", "20000"))
    with private_redis() as url:
        for _ in range(options.rounds):
            one_drain(url, options.case, jobs, options.stop_services)


if __name__ == "__main__":
    main()
