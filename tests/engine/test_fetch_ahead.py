"""A lane (a sync processor up to concurrency 4) takes a job ahead while its jobs are short:
the next job is taken with the record of the one before, and runs while that record is
under way. One that waits behind a job that runs long goes back to the queue."""

from __future__ import annotations

import threading

import pytest

from flowjobs.engine import worker as worker_module
from tests.helpers import wait_for


@pytest.fixture(autouse=True)
def every_job_is_short(monkeypatch):
    # the jobs here are quick, but a loaded machine may stall one past the real bound
    monkeypatch.setattr(worker_module, "FETCH_AHEAD_UNDER_S", 5.0)


def states_inside(queue, job_ids, seen, release=None):
    """A processor that notes, inside each job (`seen`, in the order they ran), the states
    of `job_ids`; a job named "block" waits for `release`."""

    def process(job):
        seen[job.id] = {other: queue.get_job_state(other) for other in job_ids}
        if job.name == "block":
            assert release.wait(20)
        return job.data.get("n")

    return process


def test_the_job_after_a_short_one_is_taken_ahead_and_order_is_kept(queue, make_worker):
    jobs = [queue.add("x", {"n": n}) for n in range(4)]
    ids = [job.id for job in jobs]
    seen: dict[str, dict[str, str]] = {}
    make_worker("q", states_inside(queue, ids, seen))
    wait_for(lambda: queue.get_job_counts("completed")["completed"] == 4)
    assert list(seen) == ids
    # while the second job ran, the third was already taken (active), the fourth not
    assert seen[ids[1]][ids[2]] == "active"
    assert seen[ids[1]][ids[3]] == "waiting"
    assert [queue.get_job(i).returnvalue for i in ids] == [0, 1, 2, 3]
    assert all(queue.get_job(i).attempts_started == 1 for i in ids)


def test_without_fetch_ahead_a_lane_takes_one_job_at_a_time(queue, make_worker):
    jobs = [queue.add("x", {"n": n}) for n in range(3)]
    ids = [job.id for job in jobs]
    seen: dict[str, dict[str, str]] = {}
    make_worker("q", states_inside(queue, ids, seen), fetch_ahead=False)
    wait_for(lambda: queue.get_job_counts("completed")["completed"] == 3)
    assert seen[ids[1]][ids[2]] == "waiting"


def one_behind_a_long_job(queue, make_worker, release, seen):
    """A worker runs a short job, then a long one (until `release`), with the job after
    it taken ahead: the three jobs."""
    first = queue.add("x", {"n": 0})
    long = queue.add("block", {"n": 1})
    behind = queue.add("x", {"n": 2})
    make_worker("q", states_inside(queue, [behind.id], seen, release))
    wait_for(lambda: long.id in seen)
    assert seen[long.id][behind.id] == "active"  # taken ahead of the long job
    return first, long, behind


def test_a_job_waiting_behind_a_long_one_is_given_back_for_another_worker(queue, make_worker):
    release = threading.Event()
    seen: dict[str, dict[str, str]] = {}
    try:
        first, long, behind = one_behind_a_long_job(queue, make_worker, release, seen)
        # given back (FETCH_AHEAD_GIVE_BACK_S) while the long job still runs
        wait_for(lambda: queue.get_job_state(behind.id) == "waiting", timeout=5)
        other: list[str] = []
        make_worker("q", lambda job: other.append(job.id))
        wait_for(lambda: queue.get_job_state(behind.id) == "completed")
        assert other == [behind.id]
        assert queue.get_job_state(long.id) == "active"
    finally:
        release.set()
    wait_for(lambda: queue.get_job_state(long.id) == "completed")
    assert queue.get_job_state(first.id) == "completed"
    given_back = queue.get_job(behind.id)
    assert given_back.attempts_started == 1  # the start it never had is not counted
    assert behind.id not in seen  # run once, by the other worker


def test_a_job_taken_ahead_and_cancelled_fails_without_running(queue, make_worker, monkeypatch):
    monkeypatch.setattr(worker_module, "FETCH_AHEAD_GIVE_BACK_S", 60.0)
    release = threading.Event()
    seen: dict[str, dict[str, str]] = {}
    try:
        _, long, behind = one_behind_a_long_job(queue, make_worker, release, seen)
        # (the worker's answer: it has the request before the long job ends)
        assert queue.cancel_and_confirm(behind.id, "not wanted", timeout=10) == "signalled"
    finally:
        release.set()
    wait_for(lambda: queue.get_job_state(behind.id) == "failed")
    assert queue.get_job(behind.id).failed_reason == "cancelled: not wanted"
    assert behind.id not in seen  # its processor never ran
    wait_for(lambda: queue.get_job_state(long.id) == "completed")


@pytest.mark.parametrize("fetch_ahead", [True, False])
def test_pausing_lets_a_job_taken_ahead_run_and_takes_no_more(
    queue, make_worker, fetch_ahead, monkeypatch
):
    monkeypatch.setattr(worker_module, "FETCH_AHEAD_GIVE_BACK_S", 60.0)
    release = threading.Event()
    queue.add("x", {"n": 0})
    long = queue.add("block", {"n": 1})
    rest = [queue.add("x", {"n": n}) for n in range(2, 6)]
    seen: dict[str, dict[str, str]] = {}
    worker = make_worker("q", states_inside(queue, [], seen, release), fetch_ahead=fetch_ahead)
    wait_for(lambda: long.id in seen)
    pauser = threading.Thread(target=worker.pause)
    pauser.start()
    release.set()
    pauser.join(10)
    assert not pauser.is_alive()
    wait_for(lambda: queue.get_job_counts("active")["active"] == 0)
    ran_after = [job.id for job in rest if job.id in seen]
    # the job taken ahead of the long one ran; none was taken after the pause
    assert ran_after == ([rest[0].id] if fetch_ahead else [])
    assert queue.get_job_counts("waiting")["waiting"] == len(rest) - len(ran_after)


@pytest.mark.parametrize(
    "limit",
    [
        lambda queue: queue.set_global_concurrency(2),
        lambda queue: queue.set_group_concurrency(2),
        lambda queue: queue.set_group_rate_limit(100, 1000),
    ],
    ids=["global concurrency", "group concurrency", "group rate limit"],
)
def test_a_queue_with_a_global_or_group_limit_has_no_job_taken_ahead(queue, make_worker, limit):
    # a job held ahead would count against the limit while another worker waits for it
    limit(queue)
    jobs = [queue.add("x", {"n": n}) for n in range(3)]
    ids = [job.id for job in jobs]
    seen: dict[str, dict[str, str]] = {}
    make_worker("q", states_inside(queue, ids, seen))
    wait_for(lambda: queue.get_job_counts("completed")["completed"] == 3)
    assert seen[ids[1]][ids[2]] == "waiting"
