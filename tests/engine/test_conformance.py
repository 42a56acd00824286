"""BullMQ 6 conformance (issue 16): behaviours checked against Node BullMQ 6's source.

Each test names its item of the issue. Those Node also has are checked against the real
npm package in tests/interop/test_conformance.py.
"""

from __future__ import annotations

import threading

import pytest

from flowjobs.engine import Worker
from tests.helpers import wait_for


@pytest.fixture
def manual(redis_url, prefix):
    worker = Worker("q", None, connection=redis_url, prefix=prefix, drain_delay=0.2)
    yield worker
    worker.close()


# --- 1. local completed/failed events see the job as Redis now holds it -------------------
def test_completed_and_failed_listeners_see_the_updated_job(queue, make_worker, redis_client):
    seen = {}
    done = threading.Event()

    def process(job):
        if job.name == "bad":
            raise ValueError("broken")
        return {"n": 2}

    def snapshot(event):
        def listener(job, _value):
            seen[event] = (job.attempts_made, job.returnvalue, job.failed_reason, job.finished_on)
            if len(seen) == 2:
                done.set()

        return listener

    good = queue.add("good")
    bad = queue.add("bad")
    worker = make_worker("q", process, autorun=False)
    worker.on("completed", snapshot("completed")).on("failed", snapshot("failed"))
    worker.start()
    assert done.wait(10)
    good_key, bad_key = queue.keys.job(good.id), queue.keys.job(bad.id)
    assert seen["completed"] == (1, {"n": 2}, None, int(redis_client.hget(good_key, "finishedOn")))
    assert seen["failed"] == (1, None, "broken", int(redis_client.hget(bad_key, "finishedOn")))


# --- 2. manual processing updates the local Job -----------------------------------------
def test_manual_moves_update_the_local_job(queue, manual, redis_client):
    queue.add("a")
    queue.add("b")
    job = manual.get_next_job("t1")
    job.move_to_completed({"ok": True}, "t1")
    assert job.attempts_made == 1
    assert job.returnvalue == {"ok": True}
    assert job.finished_on == int(redis_client.hget(job.key, "finishedOn"))
    other = manual.get_next_job("t2")
    other.move_to_failed(RuntimeError("nope"), "t2")
    assert other.attempts_made == 1
    assert other.failed_reason == "nope"
    assert other.finished_on == int(redis_client.hget(other.key, "finishedOn"))
    assert "RuntimeError: nope" in other.stacktrace[-1]


# --- 3. get_next_job emits active -------------------------------------------------------------
def test_get_next_job_emits_active(queue, manual):
    queue.add("a")
    active = []
    manual.on("active", active.append)
    job = manual.get_next_job("t")
    assert [j.id for j in active] == [job.id]


# --- 4. move_to_failed with fetch_next hands back the next job on a retry with backoff --------
def test_move_to_failed_with_backoff_fetches_the_next_job(queue, manual):
    first = queue.add("a", attempts=3, backoff={"type": "fixed", "delay": 60_000})
    second = queue.add("b")
    job = manual.get_next_job("t")
    assert job.id == first.id
    following = job.move_to_failed(RuntimeError("again"), "t", fetch_next=True)
    assert queue.get_job_state(first.id) == "delayed"
    assert following is not None and following.id == second.id
    assert queue.get_job_state(second.id) == "active"
    assert job.attempts_made == 1 and job.finished_on is None


# --- 5. get_jobs fills a page whose ids lost their hash ------------------------------------
def test_get_jobs_backfills_a_page_past_ids_without_a_hash(queue, redis_client):
    jobs = [queue.add("j", {"i": i}) for i in range(6)]
    # two ids of the first page lose their hash (removed behind the list's back)
    redis_client.delete(queue.keys.job(jobs[0].id), queue.keys.job(jobs[2].id))
    page = queue.get_jobs(["waiting"], 0, 2, asc=True)
    assert [job.id for job in page] == [jobs[1].id, jobs[3].id, jobs[4].id]
    page = queue.get_jobs(["waiting"], 0, 2)  # newest first
    assert [job.id for job in page] == [jobs[5].id, jobs[4].id, jobs[3].id]


# --- 6. drain keeps the priority counter -----------------------------------------------------
def test_drain_keeps_the_priority_counter(queue, redis_client):
    queue.add("p", priority=3)
    queue.add("p", priority=3)
    counter = redis_client.get(queue.keys.key("pc"))
    assert counter is not None
    assert queue.drain() == 2
    assert redis_client.get(queue.keys.key("pc")) == counter


# --- 7 and 14. schedulers: a past end date, and count/limit, return None ---------------------
def test_an_end_date_past_refused_by_the_queue_and_none_from_the_scheduler(queue):
    """As Node 6.7: Queue.upsertJobScheduler throws, JobScheduler.upsertJobScheduler (what
    a worker or a declaration sync goes through) returns nothing."""
    from flowjobs.engine import SchedulerError
    from flowjobs.engine.schedulers import upsert_job_scheduler

    with pytest.raises(SchedulerError, match="end_date is in the past"):
        queue.upsert_job_scheduler("old", every=1_000, end_date=1_000)
    assert upsert_job_scheduler(queue, "old", every=1_000, end_date=1_000) is None
    assert queue.get_job_scheduler("old") is None
    from flowjobs.engine import sync_job_schedulers

    with pytest.raises(SchedulerError, match="end_date is in the past"):
        sync_job_schedulers(queue, {"old": {"every": 1_000, "end_date": 1_000}})


def test_scheduler_count_and_limit(queue):
    assert queue.upsert_job_scheduler("s", every=60_000, limit=3, count=3) is None
    assert queue.get_job_scheduler("s") is None
    job = queue.upsert_job_scheduler("s", every=60_000, limit=3, count=2)
    assert job is not None and job.opts["repeat"]["count"] == 3
    assert queue.upsert_job_scheduler("t", every=60_000).opts["repeat"]["count"] == 1
    from flowjobs.engine import SchedulerError

    with pytest.raises(SchedulerError, match="count"):
        queue.upsert_job_scheduler("u", every=60_000, count=-1)
    assert queue.get_job_scheduler("u") is None


# --- 8. a closed FlowProducer writes nothing ---------------------------------------------------
def test_a_closed_flow_producer_adds_nothing(flow_producer, queue):
    flow_producer.close()
    assert flow_producer.add({"name": "root", "queue_name": "q"}) is None
    assert queue.get_job_counts() == dict.fromkeys(queue.get_job_counts(), 0)


# --- 9. rate limit ttl and the removers' counts ------------------------------------------------
def test_rate_limit_ttl_and_removal_counts(queue):
    assert queue.get_rate_limit_ttl() == -2
    queue.rate_limit(5_000)
    assert 4_000 < queue.get_rate_limit_ttl() <= 5_000
    assert queue.remove_rate_limit_key() == 1
    assert queue.remove_rate_limit_key() == 0
    assert queue.get_rate_limit_ttl() == -2
    queue.set_global_concurrency(2)
    assert queue.remove_global_concurrency() == 1
    assert queue.remove_global_concurrency() == 0
    queue.set_global_rate_limit(3, 1_000)
    assert queue.remove_global_rate_limit() == 2
    assert queue.remove_global_rate_limit() == 0


# --- 11. get_counts_per_priority -------------------------------------------------------------
def test_get_counts_per_priority(queue):
    queue.add("plain")
    queue.add("plain")
    queue.add("p1", priority=1)
    queue.add("p5", priority=5)
    queue.add("p5", priority=5)
    queue.add("p5", priority=5)
    counts = queue.get_counts_per_priority([0, 1, 5, 7, 5])
    assert counts == {0: 2, 1: 1, 5: 3, 7: 0}
    from flowjobs.engine import InvalidJobOptions

    with pytest.raises(InvalidJobOptions, match="priority"):
        queue.get_counts_per_priority([-1])


# --- 12. custom events through a QueueEventsProducer -----------------------------------------
def test_published_events_reach_queue_events_listeners(redis_url, prefix, redis_client):
    from flowjobs.engine import InvalidEvent, QueueEvents, QueueEventsProducer

    received = []
    arrived = threading.Event()
    listener = QueueEvents("q", connection=redis_url, prefix=prefix)
    listener.on("invoice-sent", lambda event: (received.append(event), arrived.set()))
    producer = QueueEventsProducer("q", connection=redis_url, prefix=prefix)
    try:
        with pytest.raises(InvalidEvent, match="text or a number"):
            producer.publish_event("invoice-sent", {"customer": {"id": 1}})
        with pytest.raises(InvalidEvent, match="event name"):
            producer.publish_event("")
        assert redis_client.exists(f"{prefix}:q:events") == 0  # nothing written
        entry_id = producer.publish_event("invoice-sent", {"invoice": "F-7", "total": 12.5})
        assert arrived.wait(5)
        assert received[0] == {
            "event": "invoice-sent",
            "invoice": "F-7",
            "total": "12.5",
            "id": entry_id,
        }
        for _ in range(300):
            producer.publish_event("tick", max_events=10)
        # trimmed approximately (whole stream nodes of 100 entries), as Node's MAXLEN ~
        assert redis_client.xlen(f"{prefix}:q:events") <= 200
    finally:
        listener.close()
        producer.close()


# --- 13. locks_renewed -------------------------------------------------------------------------
def test_the_worker_emits_locks_renewed(queue, make_worker):
    renewed = []
    release = threading.Event()
    job = queue.add("long")
    worker = make_worker(
        "q", lambda job: release.wait(10), autorun=False, lock_duration=400, lock_renew_time=100
    )
    worker.on("locks_renewed", renewed.append)
    worker.start()
    try:
        wait_for(lambda: renewed)
    finally:
        release.set()
    assert renewed[0] == {"count": 1, "job_ids": [job.id]}


# --- small Node methods the API table lists as provided --------------------------------------
def test_global_rate_limit_worker_pause_and_clear_logs(queue, manual):
    assert queue.get_global_rate_limit() is None
    queue.set_global_rate_limit(5, 1_000)
    assert queue.get_global_rate_limit() == {"max": 5, "duration": 1_000}
    assert manual.is_paused() is False
    manual.pause()
    assert manual.is_paused() is True
    job = queue.add("logged")
    for line in ("one", "two", "three"):
        job.log(line)
    job.clear_logs(keep_logs=2)
    assert queue.get_job_logs(job.id) == (["two", "three"], 2)
    job.clear_logs()
    assert queue.get_job_logs(job.id) == ([], 0)
