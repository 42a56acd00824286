"""Where a drain's CPU goes, process by process: runs a bench command and prints the CPU
each group of processes spent per job while the queue's completed set grew from FROM to
TO jobs (the drain's steady middle: no start-up, no prefill, no shutdown), and how busy
the machine was meanwhile.

usage: cpu_split.py [--key KEY] [--from N] [--to N] [--redis-port P] -- COMMAND...

    PYTHONPATH=. REDIS_URL=redis://127.0.0.1:6401/0 BENCH_W6_N=15000 \\
        .venv/bin/python bench/cpu_split.py --key bull:bench-orm:completed \\
        -- .venv/bin/python bench/flowjobs_bench.py run W6.orm.runworker

Groups: PostgreSQL, redis-server, runworker's services process, runworker's workers, the
bench process, Celery; any other process by its command line. Linux only (/proc).
"""

from __future__ import annotations

import argparse
import collections
import os
import subprocess
import sys
import time

import redis

GROUPS = ("postgres", "redis-server", "--services", "runworker", "flowjobs_bench", "celery")


def cpu_ticks_by_process() -> dict[str, tuple[str, int]]:
    """pid -> (command line, user + system CPU ticks so far), for every process."""
    found = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as stat, open(f"/proc/{pid}/cmdline") as cmdline:
                fields, command = stat.read(), cmdline.read().replace("\0", " ").strip()
        except OSError:  # it ended meanwhile
            continue
        after_name = fields.rsplit(")", 1)[1].split()
        name = command or fields.split("(", 1)[1].rsplit(")", 1)[0]
        found[pid] = (name, int(after_name[11]) + int(after_name[12]))
    return found


def machine_ticks() -> list[int]:
    """user, nice, system, idle, iowait, irq, softirq, steal ticks of all CPUs."""
    with open("/proc/stat") as stat:
        return [int(value) for value in stat.readline().split()[1:9]]


def group_of(command: str) -> str:
    return next((group for group in GROUPS if group in command), command[:70])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--key", default="bull:bench:completed")
    parser.add_argument("--from", dest="first", type=int, default=2000)
    parser.add_argument("--to", dest="last", type=int, default=12000)
    parser.add_argument("--redis-port", type=int, default=6401)
    parser.add_argument("command", nargs="+")
    options = parser.parse_args()

    client = redis.Redis(port=options.redis_port)

    def completed() -> int:
        try:
            return client.zcard(options.key)
        except redis.RedisError:  # not there yet
            return 0

    def wait_for(count: int, process: subprocess.Popen) -> None:
        while completed() < count:
            if process.poll() is not None:
                sys.exit(f"cpu_split: the command ended before {count} jobs completed")
            time.sleep(0.002)

    def snapshot_at(count: int, process: subprocess.Popen) -> tuple:
        """Once `count` jobs completed: every process's CPU, the machine's, the count, the time."""
        wait_for(count, process)
        return cpu_ticks_by_process(), machine_ticks(), completed(), time.monotonic()

    process = subprocess.Popen(options.command)
    before, machine_before, jobs_before, t0 = snapshot_at(options.first, process)
    after, machine_after, jobs_after, t1 = snapshot_at(options.last, process)
    process.wait()

    jobs = jobs_after - jobs_before
    spent: collections.Counter[str] = collections.Counter()
    for pid, (command, ticks) in after.items():
        ticks -= before.get(pid, (command, 0))[1]
        if ticks > 0:
            spent[group_of(command)] += ticks
    per_second = os.sysconf("SC_CLK_TCK")
    print(f"{jobs} jobs in {t1 - t0:.2f} s: {jobs / (t1 - t0):,.0f} jobs/s")
    print("| CPU µs/job | processes |\n|---|---|")
    for group, ticks in spent.most_common(10):
        print(f"| {ticks / per_second / jobs * 1e6:,.0f} | {group} |")
    delta = [b - a for a, b in zip(machine_before, machine_after, strict=True)]
    total = sum(delta) or 1
    busy = delta[0] + delta[1] + delta[2] + delta[5] + delta[6]
    print(
        f"machine: busy {100 * busy / total:.0f}%, idle {100 * (delta[3] + delta[4]) / total:.0f}%,"
        f" stolen {100 * delta[7] / total:.0f}%"
    )
    return process.returncode


if __name__ == "__main__":
    sys.exit(main())
