"""Synchronous processors: the worker's own thread pool (flowjobs.engine.threadpool)."""

from __future__ import annotations

import threading

import pytest

from tests.helpers import wait_for


def test_sync_processors_run_side_by_side_up_to_the_concurrency(queue, make_worker):
    # four jobs meet at a barrier of four: it only opens if they run at the same time
    barrier = threading.Barrier(4, timeout=20)
    names: list[str] = []

    def process(job):
        names.append(threading.current_thread().name)
        barrier.wait()
        return job.data["n"]

    jobs = [queue.add("x", {"n": n}) for n in range(8)]
    make_worker("q", process, concurrency=4)
    wait_for(lambda: queue.get_job_counts("completed")["completed"] == 8, timeout=20)
    assert [queue.get_job(job.id).returnvalue for job in jobs] == list(range(8))
    assert all(name.startswith("flowjobs-q-") for name in names)
    assert 1 < len(set(names)) <= 4


def test_a_burst_of_sync_jobs_all_complete(queue, make_worker):
    queue.add_bulk([{"name": "x", "data": {"n": n}} for n in range(500)])
    make_worker("q", lambda job: job.data["n"] * 2, concurrency=20)
    wait_for(lambda: queue.get_job_counts("completed")["completed"] == 500, timeout=30)
    assert queue.get_job_counts("failed", "active") == {"failed": 0, "active": 0}


def test_stop_iteration_from_a_sync_processor_fails_the_job(queue, make_worker):
    def process(job):
        raise StopIteration("out of items")

    job = queue.add("x")
    make_worker("q", process)
    wait_for(lambda: queue.get_job_state(job.id) == "failed")
    assert "StopIteration" in queue.get_job(job.id).failed_reason

    # the worker keeps going
    ok = queue.add("y")
    wait_for(lambda: queue.get_job_state(ok.id) == "failed")


def test_quick_sync_jobs_do_not_wake_a_thread_each(queue, make_worker):
    # Waking a sleeping thread per job (a futex call, a context switch, a wait for the
    # GIL) costs far more than a no-op job: a burst is run by a few threads in a row.
    names: set[str] = set()

    def process(job):
        names.add(threading.current_thread().name)

    queue.add_bulk([{"name": "x", "data": {"n": n}} for n in range(1000)])
    worker = make_worker("q", process, concurrency=50)
    wait_for(lambda: queue.get_job_counts("completed")["completed"] == 1000, timeout=30)
    assert len(names) < 25, f"{len(names)} threads ran 1000 no-op jobs"
    assert worker._threads.wakeups < 250


def test_at_concurrency_1_one_thread_runs_records_and_takes_the_jobs(
    queue, make_worker, redis_client
):
    """Node's worker runs a job, records it and takes the next on its one thread. A
    sync worker at concurrency 1 did that in two: the loop took the job, woke a thread
    to run it, and was woken back to record it, two thread wake-ups a job (a futex call,
    a context switch, a wait for the GIL each). Its one thread now records each job and
    takes the next in the same round trip, and the loop stays free for lock renewal."""
    count = 300
    names: set[str] = set()

    def process(job):
        names.add(threading.current_thread().name)
        return job.data["n"]

    jobs = queue.add_bulk([{"name": "x", "data": {"n": n}} for n in range(count)])
    before = redis_client.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0)
    worker = make_worker("q", process)
    wait_for(lambda: worker.jobs_processed == count, timeout=30)
    calls = redis_client.info("commandstats")["cmdstat_evalsha"]["calls"] - before
    assert [queue.get_job(job.id).returnvalue for job in jobs[:: count // 10]] == list(
        range(0, count, count // 10)
    )
    assert len(names) == 1, names
    assert worker._threads.wakeups <= 2, f"{worker._threads.wakeups} wake-ups for {count} jobs"
    # one script call a job (finish it and take the next), and a few to start
    assert calls <= count + 5, f"{calls} script calls for {count} jobs"


def test_up_to_concurrency_4_each_slot_is_a_lane_of_its_own(queue, make_worker, redis_client):
    """Each slot's thread runs a job, records it and takes its next in one round trip, as
    at concurrency 1: no thread wake-up a job, one script call a job, never more jobs at
    once than the concurrency, and every job gets a lock token of its own."""
    count, concurrency = 300, 3
    lock = threading.Lock()
    running = [0]
    most = [0]
    tokens: set[str] = set()
    barrier = threading.Barrier(concurrency, timeout=20)  # the first jobs meet: side by side

    def process(job):
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
            tokens.add(job.token)
        if job.data["n"] < concurrency:
            barrier.wait()
        with lock:
            running[0] -= 1
        return job.data["n"]

    jobs = queue.add_bulk([{"name": "x", "data": {"n": n}} for n in range(count)])
    before = redis_client.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0)
    worker = make_worker("q", process, concurrency=concurrency)
    wait_for(lambda: worker.jobs_processed == count, timeout=30)
    calls = redis_client.info("commandstats")["cmdstat_evalsha"]["calls"] - before
    assert [queue.get_job(job.id).returnvalue for job in jobs[:: count // 10]] == list(
        range(0, count, count // 10)
    )
    assert most[0] == concurrency
    assert len(tokens) == count
    assert worker._threads.wakeups <= 2 * concurrency, worker._threads.wakeups
    assert calls <= count + 5 * concurrency, f"{calls} script calls for {count} jobs"
    assert worker.jobs_processed == count
    assert queue.get_job_counts("completed", "failed", "active") == {
        "completed": count,
        "failed": 0,
        "active": 0,
    }


def test_a_listener_on_the_job_s_thread_may_close_the_worker(queue, make_worker):
    """At concurrency 1 a sync worker's completed listeners run on the job's thread.
    close() from there must not wait for that thread (it would wait for itself)."""
    queue.add_bulk([{"name": "x", "data": {"n": n}} for n in range(5)])
    worker = make_worker("q", lambda job: job.data["n"], autorun=False)
    closed = threading.Event()

    def on_completed(job, result):
        if result == 0:
            worker.close()
            closed.set()

    worker.on("completed", on_completed)
    worker.start()
    assert closed.wait(20), "close() from a listener did not return"
    assert worker.wait_until_closed(20)
    assert queue.get_job_counts("completed")["completed"] >= 1


@pytest.mark.parametrize("concurrency", [1, 2])
def test_a_sync_processor_may_close_its_worker(queue, make_worker, concurrency):
    """close() from a processor's thread returns at once: waiting for the worker to wind
    down would wait for that same processor to return."""
    job = queue.add("x", {})
    holder: list = []
    returned = threading.Event()

    def process(job):
        holder[0].close()
        returned.set()
        return "closed"

    worker = make_worker("q", process, concurrency=concurrency, autorun=False)
    holder.append(worker)
    worker.start()
    assert returned.wait(20), "close() from the processor did not return"
    assert worker.wait_until_closed(20)
    assert queue.get_job(job.id).returnvalue == "closed"


def test_a_listener_of_a_worker_run_in_the_caller_s_thread_may_close_it(queue, make_worker):
    """run() runs the loop in the caller's thread; close() from a listener there
    returned only when the worker had stopped, which waited for that listener."""
    queue.add("x", {})

    async def process(job):
        return "ok"

    worker = make_worker("q", process, autorun=False)
    worker.on("completed", lambda job, result: worker.close())
    done = threading.Event()
    threading.Thread(target=lambda: (worker.run(), done.set()), daemon=True).start()
    assert done.wait(20), "run() did not return after close() from a listener"
