"""W1's django.tasks enqueue against `Queue.add`, in one process, blocks alternated.

    REDIS_URL=redis://127.0.0.1:6401/0 .venv/bin/python bench/task_enqueue.py [rounds] [block]

Each round times a block of one-by-one adds of each kind in turn (W1.add's payload, on
bench_site's default settings): `Queue.add`; `Queue.add` of the job `Task.enqueue` makes
(priority, pre-made id, the task's data); `Task.enqueue`; and `Task.enqueue` on a backend
that writes nothing (bench_site/contract.py: the `TaskResult` and the signal Django asks
for). It prints µs per add, client CPU per add and the per-round ratio to `Queue.add`
(median and range). One process, so the
kinds share the interpreter's state and the machine's moment: the ratio is the figure.
The flowjobs source is the checkout's own (FLOWJOBS_SRC to point elsewhere).
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time

_BENCH = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [_BENCH, os.environ.get("FLOWJOBS_SRC") or os.path.dirname(_BENCH)]

import flowjobs_bench as fb  # noqa: E402


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    block = int(sys.argv[2]) if len(sys.argv) > 2 else 3000
    with tempfile.TemporaryDirectory(prefix="flowjobs-bench-site-") as site_dir:
        os.environ.update(fb.site_env(site_dir))
        measure(rounds, block)


def measure(rounds: int, block: int) -> None:
    import django

    django.setup()
    from bench_site.tasks import record
    from django.conf import settings
    from django.test.utils import override_settings

    contract = {"BACKEND": "bench_site.contract.ContractOnly", "QUEUES": [record.queue_name]}
    override_settings(TASKS={**settings.TASKS, "contract": contract}).enable()
    contract_task = record.using(backend="contract")

    from flowjobs import conf
    from flowjobs.tasks.backend import TASK_IDS
    from flowjobs.tasks.results import to_bullmq_priority

    plain = fb.new_queue()
    task_queue = conf.get_queue(record.queue_name)
    priority = to_bullmq_priority(record.priority)

    def add(i: int) -> None:
        plain.add("job", fb.payload(i))

    def taskjob(i: int) -> None:
        data = {"args": [], "kwargs": fb.payload(i), "backend": "default"}
        task_queue.add(record.module_path, data, priority=priority, job_id=TASK_IDS.new())

    def enqueue(i: int) -> None:
        record.enqueue(**fb.payload(i))

    def contract_only(i: int) -> None:
        contract_task.enqueue(**fb.payload(i))

    kinds = {
        "Queue.add": add,
        "the task's job": taskjob,
        "Task.enqueue": enqueue,
        "Task.enqueue, Django's contract only": contract_only,
    }
    for run in kinds.values():  # connect, load the scripts, warm the caches
        for i in range(200):
            run(i)
    wall: dict[str, list[float]] = {name: [] for name in kinds}
    cpu: dict[str, list[float]] = {name: [] for name in kinds}
    for _ in range(rounds):
        for name, run in kinds.items():
            t0, c0 = time.perf_counter(), time.process_time()
            for i in range(block):
                run(i)
            wall[name].append((time.perf_counter() - t0) / block * 1e6)
            cpu[name].append((time.process_time() - c0) / block * 1e6)
    for queue in (plain, task_queue):
        queue.obliterate(force=True)

    print(f"{rounds} rounds of {block} adds each, load average {os.getloadavg()[0]:.2f}")
    print("| one add of | µs | client CPU µs | its rate / Queue.add's (median, range) |")
    print("|---|---|---|---|")
    for name in kinds:
        ratios = [a / b for a, b in zip(wall["Queue.add"], wall[name], strict=True)]
        ratio = f"{statistics.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f})"
        if kinds[name] is contract_only:
            ratio = "(writes nothing)"
        print(
            f"| {name} | {statistics.median(wall[name]):.0f} "
            f"| {statistics.median(cpu[name]):.0f} | {ratio} |"
        )


if __name__ == "__main__":
    main()
