"""Global concurrency (meta `concurrency`): never more active jobs than the cap, across workers."""

from __future__ import annotations

import threading

from tests.helpers import wait_for, work_for


def test_global_concurrency_caps_all_workers_together(queue, make_worker, redis_client, prefix):
    queue.set_global_concurrency(3)
    assert queue.get_global_concurrency() == 3
    lock = threading.Lock()
    running = 0
    peak = 0

    def process(job):
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        work_for(0.03)
        with lock:
            running -= 1

    jobs = queue.add_bulk([{"name": "work", "data": {"i": i}} for i in range(40)])
    active_seen = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            active_seen.append(redis_client.llen(f"{prefix}:q:active"))
            stop.wait(0.002)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    for _ in range(3):
        make_worker("q", process, concurrency=4)
    try:
        wait_for(lambda: queue.get_job_counts("completed")["completed"] == len(jobs))
    finally:
        stop.set()
        sampler.join()
    assert peak == 3  # the cap was reached, never passed
    assert max(active_seen) <= 3


def test_removing_the_cap_lets_workers_use_their_own_concurrency(queue, make_worker):
    queue.set_global_concurrency(1)
    queue.remove_global_concurrency()
    assert queue.get_global_concurrency() is None
    started = threading.Barrier(4, timeout=5)
    queue.add_bulk([{"name": "x"} for _ in range(4)])
    make_worker("q", lambda job: started.wait(), concurrency=4)
    wait_for(lambda: queue.get_job_counts("completed")["completed"] == 4)
