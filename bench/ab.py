"""Interleaved A/B runs: flowjobs and Node BullMQ take turns on the same cases.

usage: .venv/bin/python bench/ab.py [ROUNDS] [CASE ...]
       (default: 5 rounds of W1.add W1.bulk W2.c1 W2.c50 W2.c50.sync)

On a shared machine the speed drifts by tens of percent within minutes, so a full
`bench/run` (which runs each contestant's cases in one block) can compare a fast
minute of one with a slow minute of the other. Here each round runs one case for
both contestants back to back, in alternating order, on one private Redis that is
flushed before every run; the table gives medians and the median of the per-round
ratios. Needs the harness copy in bench/.cache/anchors (`BENCH_PREPARE_ONLY=1
bench/run`) and Node's bullmq (ANCHORS_NODE, e.g. tests/interop). A `.sync` or
`.runworker` case of flowjobs is compared with Node's case of the same name without
the suffix (Node has neither synchronous processors nor a Django command). The load
average before each round is printed with the round and under the table, and so is the
CPU each run took per job: the contestant's processes (all of them, producer included)
and the Redis server's, which on a 2-core machine is what the speed is traded against.
"""

from __future__ import annotations

import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from compare import base_case  # bench/compare.py, beside this script
from engine import free_port  # bench/engine.py, beside this script

BENCH = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCH)
HARNESS = os.path.join(BENCH, ".cache", "anchors")
CONTESTANTS = ("flowjobs", "bullmq-node")
DEFAULT_CASES = ["W1.add", "W1.bulk", "W2.c1", "W2.c50", "W2.c50.sync"]


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a running process, from /proc."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_case(
    contestant: str, case: str, env: dict[str, str], redis_pid: int
) -> tuple[float, float, float] | None:
    """(jobs/s, contestant CPU s, Redis CPU s) of one run."""
    if contestant != "flowjobs":
        case = base_case(case)
    script = os.path.join(HARNESS, "contestants", f"{contestant}.sh")
    cpu, redis_cpu = children_cpu_s(), process_cpu_s(redis_pid)
    out = subprocess.run(
        ["bash", script, "run", case], env=env, capture_output=True, text=True, timeout=600
    )
    cpu, redis_cpu = children_cpu_s() - cpu, process_cpu_s(redis_pid) - redis_cpu
    for line in out.stdout.splitlines():
        parts = line.split()
        if len(parts) == 4 and parts[0] == contestant and parts[2] == "jobs_per_s":
            return float(parts[3]), cpu, redis_cpu
    print(f"{contestant} {case}: no result\n{out.stderr[-2000:]}", file=sys.stderr)
    return None


def main(argv: list[str]) -> int:
    rounds = int(argv[1]) if len(argv) > 1 and argv[1].isdigit() else 5
    cases = [a for a in argv[1:] if not a.isdigit()] or DEFAULT_CASES
    if not os.path.isdir(os.path.join(HARNESS, "contestants")):
        raise SystemExit("run bench/run once first (it prepares bench/.cache/anchors)")
    port = free_port()
    scratch = tempfile.mkdtemp(prefix="flowjobs-ab-")
    redis = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
        + ["--appendonly", "no", "--dir", scratch],
        stdout=subprocess.DEVNULL,
    )
    env = dict(os.environ, REDIS_HOST="127.0.0.1", REDIS_PORT=str(port))
    env.setdefault("FLOWJOBS_PYTHON", os.path.join(REPO, ".venv", "bin", "python"))
    env.setdefault("FLOWJOBS_SRC", REPO)
    cli = ["redis-cli", "-p", str(port)]
    try:
        for _ in range(100):
            if subprocess.run([*cli, "ping"], capture_output=True).returncode == 0:
                break
            time.sleep(0.05)
        jobs = int(os.environ.get("BENCH_N", "20000"))
        results: dict[tuple[str, str], list[float]] = {}
        cpu_per_job: dict[tuple[str, str], list[tuple[float, float]]] = {}
        loads: list[float] = []
        ratios: dict[str, list[float]] = {}
        for r in range(rounds):
            for case in cases:
                order = CONTESTANTS if r % 2 == 0 else CONTESTANTS[::-1]
                loads.append(os.getloadavg()[0])
                got = {}
                for contestant in order:
                    subprocess.run([*cli, "flushall"], capture_output=True, check=True)
                    run = run_case(contestant, case, env, redis.pid)
                    got[contestant] = None if run is None else run[0]
                    if run is not None:
                        results.setdefault((contestant, case), []).append(run[0])
                        cpu_per_job.setdefault((contestant, case), []).append(
                            (run[1] / jobs * 1e6, run[2] / jobs * 1e6)
                        )
                if None not in got.values():
                    ratios.setdefault(case, []).append(got["flowjobs"] / got["bullmq-node"])
                print(
                    f"round {r + 1} {case}: {got} (load {loads[-1]:.2f})",
                    file=sys.stderr,
                    flush=True,
                )
        print(
            f"| case | flowjobs jobs/s | Node BullMQ jobs/s | flowjobs / Node (median of {rounds} rounds) | range |"
        )
        print("|---|---|---|---|---|")
        for case in cases:
            mine = results.get(("flowjobs", case), [])
            theirs = results.get(("bullmq-node", case), [])
            each = ratios.get(case, [])
            print(
                f"| {case} | {statistics.median(mine):,.0f} | {statistics.median(theirs):,.0f} "
                f"| {statistics.median(each):.2f}× | {min(each):.2f}-{max(each):.2f} |"
                if mine and theirs and each
                else f"| {case} | - | - | - | - |"
            )
        print("\n| case | contestant | CPU µs/job, its processes (median) | Redis CPU µs/job |")
        print("|---|---|---|---|")
        for case in cases:
            for contestant in CONTESTANTS:
                spent = cpu_per_job.get((contestant, case))
                if spent:
                    print(
                        f"| {case} | {contestant} | {statistics.median(s[0] for s in spent):,.0f} "
                        f"| {statistics.median(s[1] for s in spent):,.0f} |"
                    )
        print(
            f"\n1-minute load average before the rounds: median {statistics.median(loads):.2f}, "
            f"range {min(loads):.2f}-{max(loads):.2f} ({os.cpu_count()} CPUs)"
        )
    finally:
        redis.terminate()
        redis.wait(timeout=10)
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
