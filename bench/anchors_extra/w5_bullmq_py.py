"""W5.flows for the 'bullmq-py' anchor (PyPI bullmq), written for flowjobs' bench/run.

usage: w5_bullmq_py.py run | w5-worker IDX      (runs with the anchors' venv python)

W5: BENCH_W5_FLOWS flows (a parent with BENCH_W5_CHILDREN children, one queue) added one
by one with FlowProducer.add while BENCH_W5_WORKERS idle worker processes (concurrency
BENCH_W5_CONCURRENCY each) run. create_s: the add loop; done_s: from just before the
first add to the last parent's finishedOn (read from Redis). Same rules as
bench/flowjobs_bench.py.
"""

import asyncio
import os
import signal
import subprocess
import sys
import time

import redis
from bullmq import FlowProducer, Worker

NAME = "bullmq-py"
QUEUE = "bench"
HOST = os.environ.get("REDIS_HOST", "127.0.0.1")
PORT = int(os.environ.get("REDIS_PORT", "6390"))
REDIS_URL = f"redis://{HOST}:{PORT}/0"
CONN = {"connection": REDIS_URL}
FLOWS = int(os.environ.get("BENCH_W5_FLOWS", "200"))
CHILDREN = int(os.environ.get("BENCH_W5_CHILDREN", "10"))
WORKERS = int(os.environ.get("BENCH_W5_WORKERS", "2"))
CONCURRENCY = int(os.environ.get("BENCH_W5_CONCURRENCY", "10"))
DEADLINE_S = float(os.environ.get("BENCH_CASE_DEADLINE_S", "280"))
PAD = "x" * 72


def payload(i):
    return {
        "seq": i,
        "tenant": "acme-corp",
        "user": f"user-{i:06d}",
        "email": f"user-{i:06d}@example.com",
        "action": "send_welcome_email",
        "pad": PAD,
    }


def emit(metric, value):
    print(f"{NAME} W5.flows {metric} {value:.6g}", flush=True)


def flow_spec(seq):
    children = [
        {"name": "child", "queueName": QUEUE, "data": payload(seq + i)}
        for i in range(1, CHILDREN + 1)
    ]
    return {
        "name": "parent",
        "queueName": QUEUE,
        "data": payload(seq),
        "children": children,
    }


async def noop(job, token):
    return None


async def w5_worker(idx):
    w = Worker(QUEUE, noop, {**CONN, "concurrency": CONCURRENCY, "autorun": False})
    task = asyncio.ensure_future(w.run())
    await asyncio.sleep(0.2)
    redis.Redis.from_url(REDIS_URL).set(f"bench:ready:{idx}", "1")
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await w.close()
    await asyncio.wait_for(task, 10)


def stop_subprocess(proc):
    if proc.poll() is not None:
        return
    try:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


def wait_workers_ready(r, t_end):
    for i in range(WORKERS):
        while not r.get(f"bench:ready:{i}"):
            if time.monotonic() > t_end:
                raise TimeoutError("workers not ready")
            time.sleep(0.02)


async def add_flows_and_wait(r, t_end):
    """Returns (t0_ms, create_s, parent ids)."""
    fp = FlowProducer(CONN)
    specs = [flow_spec(f * 100) for f in range(FLOWS)]
    t0_ms = time.time() * 1000.0
    t0 = time.perf_counter()
    parent_ids = []
    for spec in specs:
        tree = await fp.add(spec)
        parent_ids.append(tree["job"].id)
    create_s = time.perf_counter() - t0
    await fp.close()
    total = FLOWS * (CHILDREN + 1)
    while r.zcard(f"bull:{QUEUE}:completed") < total:
        if r.zcard(f"bull:{QUEUE}:failed"):
            raise RuntimeError("jobs failed")
        if time.monotonic() > t_end:
            raise TimeoutError("deadline")
        await asyncio.sleep(0.01)
    return t0_ms, create_s, parent_ids


def run():
    r = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    me = os.path.abspath(__file__)
    procs = [subprocess.Popen([sys.executable, me, "w5-worker", str(i)]) for i in range(WORKERS)]
    t_end = time.monotonic() + DEADLINE_S
    try:
        wait_workers_ready(r, t_end)
        t0_ms, create_s, parent_ids = asyncio.run(add_flows_and_wait(r, t_end))
    finally:
        for p in procs:
            stop_subprocess(p)
    pipe = r.pipeline(transaction=False)
    for pid in parent_ids:
        pipe.hget(f"bull:{QUEUE}:{pid}", "finishedOn")
    finished = [float(x) for x in pipe.execute() if x is not None]
    if len(finished) != FLOWS:
        raise RuntimeError(f"{len(finished)} of {FLOWS} parents finished")
    emit("create_s", create_s)
    emit("done_s", (max(finished) - t0_ms) / 1000.0)


def main(argv):
    cmd = argv[1] if len(argv) > 1 else ""
    if cmd == "w5-worker":
        asyncio.run(w5_worker(argv[2]))
    elif cmd == "run":
        run()
    else:
        raise SystemExit(__doc__)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
