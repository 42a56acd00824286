"""Reading and managing a queue and its jobs."""

from __future__ import annotations

import pytest

from flowjobs.engine import JobLocked, JobNotInState, QueueHasActiveJobs, Worker
from tests.helpers import wait_for


def test_pause_keeps_jobs_in_wait_and_resume_wakes_workers(
    queue, make_worker, redis_client, prefix
):
    queue.pause()
    assert queue.is_paused()
    queue.add("a")
    assert redis_client.lrange(f"{prefix}:q:wait", 0, -1) == ["1"]
    assert redis_client.exists(f"{prefix}:q:marker") == 0
    done = []
    make_worker("q", lambda job: done.append(job.id))
    wait_for(lambda: redis_client.client_list() and True)
    assert queue.get_job_counts("waiting", "active") == {"waiting": 1, "active": 0}
    queue.resume()
    assert not queue.is_paused()
    wait_for(lambda: done == ["1"])
    events = [f["event"] for _, f in redis_client.xrange(f"{prefix}:q:events")]
    assert "paused" in events and "resumed" in events


def test_getters(queue, make_worker):
    for i in range(5):
        queue.add(f"j{i}", {"i": i})
    queue.add("d", delay=60_000)
    queue.add("p", priority=3)
    assert queue.get_job_counts() == {
        "waiting": 5,
        "active": 0,
        "prioritized": 1,
        "delayed": 1,
        "completed": 0,
        "failed": 0,
        "waiting-children": 0,
    }
    assert [j.id for j in queue.get_jobs("waiting")] == ["5", "4", "3", "2", "1"]
    assert [j.id for j in queue.get_jobs("waiting", asc=True)] == [
        "1",
        "2",
        "3",
        "4",
        "5",
    ]
    assert [j.id for j in queue.get_jobs(["waiting"], 0, 1, asc=True)] == ["1", "2"]
    assert [j.id for j in queue.get_jobs(["delayed", "prioritized"])] == ["6", "7"]
    assert queue.get_job("3").data == {"i": 2}
    assert queue.get_job("nope") is None
    assert queue.count() == 7


def test_logs_progress_and_data(queue):
    job = queue.add("x", {"a": 1}, keep_logs=2)
    assert job.log("one") == 1
    job.log("two")
    assert job.log("three") == 2
    assert queue.get_job_logs(job.id) == (["two", "three"], 2)
    assert queue.get_job_logs(job.id, asc=False) == (["three", "two"], 2)
    job.update_progress({"pct": 40})
    job.update_data({"a": 2})
    again = queue.get_job(job.id)
    assert again.progress == {"pct": 40} and again.data == {"a": 2}


def test_promote_change_delay_and_priority(queue, redis_client, prefix):
    delayed = queue.add("d", delay=60_000)
    delayed.change_delay(120_000)
    due = redis_client.zscore(f"{prefix}:q:delayed", delayed.id) // 4096
    assert due >= delayed.timestamp + 120_000
    delayed.promote()
    assert queue.get_job_state(delayed.id) == "waiting"
    with pytest.raises(JobNotInState):
        delayed.promote()
    job = queue.add("p", priority=9)
    job.change_priority(0)
    assert queue.get_job_state(job.id) == "waiting"
    job.change_priority(2)
    assert queue.get_job_state(job.id) == "prioritized"
    assert queue.get_job(job.id).priority == 2


def test_retry_remove_and_bulk_moves(queue, make_worker):
    def process(job):
        if job.data.get("fail"):
            raise RuntimeError("boom")
        return "ok"

    failing = queue.add_bulk([{"name": "f", "data": {"fail": True}} for _ in range(3)])
    worker = make_worker("q", process)
    wait_for(lambda: queue.get_job_counts("failed")["failed"] == 3)
    worker.close()
    failing[0].update_data({"fail": False})
    failing[0].retry()
    assert queue.get_job_state(failing[0].id) == "waiting"
    queue.retry_jobs("failed")
    assert queue.get_job_counts("waiting", "failed") == {"waiting": 3, "failed": 0}
    queue.get_job(failing[1].id).remove()
    assert queue.get_job(failing[1].id) is None
    for i in range(3):
        queue.add("later", delay=60_000 + i)
    queue.promote_jobs()
    assert queue.get_job_counts("delayed", "waiting") == {"delayed": 0, "waiting": 5}


def test_remove_refuses_a_locked_job(queue, redis_url, prefix):
    worker = Worker("q", None, connection=redis_url, prefix=prefix)
    queue.add("a")
    job = worker.get_next_job("tok", block=False)
    with pytest.raises(JobLocked):
        job.remove()
    job.move_to_completed(None, "tok")
    job.remove()
    assert queue.get_job(job.id) is None


def test_drain_clean_and_obliterate(queue, make_worker, redis_client, prefix):
    queue.add_bulk([{"name": "w"} for _ in range(3)])
    queue.add("d", delay=60_000)
    queue.add("p", priority=1)
    assert queue.drain() == 4
    assert queue.get_job_counts("waiting", "prioritized", "delayed") == {
        "waiting": 0,
        "prioritized": 0,
        "delayed": 1,
    }
    assert queue.drain(delayed=True) == 1
    jobs = queue.add_bulk([{"name": "c"} for _ in range(4)])
    worker = make_worker("q", lambda job: "ok")
    wait_for(lambda: queue.get_job_counts("completed")["completed"] == 4)
    worker.close()
    removed = queue.clean(0, limit=3, state="completed")
    assert len(removed) == 3 and set(removed) <= {j.id for j in jobs}
    assert queue.get_job_counts("completed")["completed"] == 1
    events = [f for _, f in redis_client.xrange(f"{prefix}:q:events")]
    assert {"event": "cleaned", "count": "3"} in events
    queue.obliterate()
    assert list(redis_client.scan_iter(match=f"{prefix}:q:*")) == []


def test_obliterate_refuses_active_jobs_unless_forced(queue, redis_url, prefix, redis_client):
    worker = Worker("q", None, connection=redis_url, prefix=prefix)
    queue.add("a")
    worker.get_next_job("tok", block=False)
    with pytest.raises(QueueHasActiveJobs):
        queue.obliterate()
    queue.obliterate(force=True)
    assert list(redis_client.scan_iter(match=f"{prefix}:q:*")) == []


def test_obliterate_takes_a_big_queue_count_jobs_at_a_time(queue, redis_client, prefix):
    # Once a call's budget was spent, the next state's range read 0..-1 (all of it): a
    # set too big for Lua's unpack (about 8,000) made every later call fail.
    queue.add_bulk([{"name": "w"} for _ in range(10)])
    queue.add_bulk([{"name": "p", "opts": {"priority": 1}} for _ in range(8_100)])
    queue.obliterate(count=5)
    assert list(redis_client.scan_iter(match=f"{prefix}:q:*")) == []


def test_retention_by_count_and_removal(queue, make_worker, redis_client, prefix):
    for i in range(5):
        queue.add("kept", {"i": i}, remove_on_complete=2)
    queue.add("gone", remove_on_complete=True)
    worker = make_worker("q", lambda job: job.data)
    wait_for(lambda: queue.get_job_counts("waiting", "active") == {"waiting": 0, "active": 0})
    worker.close()
    assert queue.get_job_counts("completed")["completed"] == 2
    assert redis_client.exists(f"{prefix}:q:6") == 0


def test_age_retention_with_a_big_limit_removes_thousands_at_once(
    queue, make_worker, redis_client, prefix
):
    # 9,000 finished jobs past their age: one finish removes them all (its limit allows
    # it). Taken out of the set in one ZREM, they were more than Lua's unpack takes,
    # and the finish itself failed: the job stayed active.
    old = {f"old{i}": 1 for i in range(9_000)}
    redis_client.zadd(f"{prefix}:q:completed", old)
    keep = {"age": 60, "limit": 10_000}
    job = queue.add("new", remove_on_complete=keep)
    done = []
    worker = make_worker("q", lambda job: done.append(job.id), autorun=False)
    worker.start()
    wait_for(lambda: queue.get_job_counts("completed")["completed"] == 1)
    worker.close()
    assert done == [job.id]
    assert redis_client.zrange(f"{prefix}:q:completed", 0, -1) == [job.id]
