"""A job whose outcome Redis refuses because a queue key holds another client's value (a
string at `completed`, say) is kept by its worker: it stays active under its lock, is not
run again nor failed as stalled, and its own outcome is recorded once the key is mended."""

from __future__ import annotations

import threading

import pytest

from flowjobs.engine import worker as worker_module
from tests.helpers import wait_for


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch):  # noqa: ANN001, ANN201
    monkeypatch.setattr(worker_module, "REFUSED_RECORD_RETRY_S", 0.25)


def _processor(kind: str, outcome: str, runs: threading.Semaphore):  # noqa: ANN202
    def run() -> str:
        runs.release()
        if outcome == "failed":
            raise ValueError("the job fails")
        return "done"

    if kind == "async":

        async def processor(job):  # noqa: ANN001, ANN202
            return run()

        return processor
    return lambda job: run()


@pytest.mark.parametrize("kind", ["sync", "async"])
@pytest.mark.parametrize("outcome", ["completed", "failed"])
def test_a_refused_outcome_is_sent_again_and_the_job_is_not_run_again(
    kind, outcome, queue, make_worker, redis_client, prefix
):
    foreign_key = f"{prefix}:q:{outcome}"
    redis_client.set(foreign_key, "another client's value")
    job = queue.add("x", {"n": 1}, attempts=1)
    runs = threading.Semaphore(0)
    errors: list[str] = []
    worker = make_worker(
        "q",
        _processor(kind, outcome, runs),
        autorun=False,
        lock_duration=1000,
        stalled_interval=200,
    )
    worker.on("error", lambda error: errors.append(str(error)))
    worker.start()
    # four refusals: 0.25 + 0.5 + 1 s of retries, past the 1 s lock and several
    # stalled checks
    wait_for(lambda: len(errors) >= 4, timeout=15, message="no repeated refusal")
    assert foreign_key in errors[0] and "holds a string" in errors[0], errors[0]
    assert redis_client.lrange(f"{prefix}:q:active", 0, -1) == [job.id]
    assert redis_client.get(f"{prefix}:q:{job.id}:lock") is not None  # still renewed
    assert redis_client.hget(f"{prefix}:q:{job.id}", "stc") in (None, "0")
    assert redis_client.llen(f"{prefix}:q:wait") == 0

    redis_client.delete(foreign_key)
    wait_for(lambda: queue.get_job_state(job.id) == outcome, timeout=15)
    assert runs.acquire(timeout=0) and not runs.acquire(timeout=0)  # run once only
    recorded = queue.get_job(job.id)
    if outcome == "completed":
        assert recorded.returnvalue == "done"
    else:
        assert recorded.failed_reason == "the job fails"
    assert recorded.attempts_made == 1
    worker.close()


def test_a_closing_worker_leaves_a_held_job_active_for_the_stalled_check(
    queue, make_worker, redis_client, prefix
):
    redis_client.set(f"{prefix}:q:completed", "another client's value")
    job = queue.add("x", {})
    errors: list[str] = []
    worker = make_worker("q", lambda job: "done", autorun=False, lock_duration=1000)
    worker.on("error", lambda error: errors.append(str(error)))
    worker.start()
    wait_for(lambda: errors, message="no refusal")
    closed = threading.Thread(target=worker.close)
    closed.start()
    closed.join(timeout=10)
    assert not closed.is_alive(), "close waited on the held job"
    assert redis_client.lrange(f"{prefix}:q:active", 0, -1) == [job.id]


def test_a_finish_whose_fetch_next_meets_a_foreign_value_is_recorded(
    queue, make_worker, redis_client, prefix
):
    """A finish also fetches the worker's next job, after its own writes: a foreign value
    at `wait` refused that fetch, and so the whole call, though the job was recorded. The
    worker took the finish for refused (no completed event; sent again, then "not
    active"). Now the fetch-next part gives up quietly and the worker's own fetch reports
    the foreign key."""
    wait_key = f"{prefix}:q:wait"
    job = queue.add("x", {})
    completed: list[str] = []
    errors: list[str] = []

    def processor(job):  # noqa: ANN001, ANN202
        redis_client.delete(wait_key)
        redis_client.set(wait_key, "another client's value")
        return "done"

    worker = make_worker("q", processor, autorun=False)
    worker.on("completed", lambda job, value: completed.append(job.id))
    worker.on("error", lambda error: errors.append(str(error)))
    worker.start()
    wait_for(lambda: completed, message="no completed event for the recorded job")
    assert completed == [job.id]
    assert queue.get_job(job.id).returnvalue == "done"
    wait_for(lambda: errors, message="the worker's own fetch reported nothing")
    assert all("could not record" not in error for error in errors), errors
    assert wait_key in errors[0], errors
    redis_client.delete(wait_key)
    late = queue.add("x", {})
    wait_for(lambda: late.id in completed)
    worker.close()


def test_a_foreign_stalled_set_does_not_half_write_a_finish(
    queue, make_worker, redis_client, prefix
):
    """Releasing a job's lock also takes it off the stalled set: a foreign value there
    failed the finish after it had added the job to `completed` and deleted its lock, so
    the job was in `active` and `completed` at once, lockless, and the stalled check ran
    it again. Now the finish goes through."""
    stalled_key = f"{prefix}:q:stalled"
    redis_client.set(stalled_key, "another client's value")
    job = queue.add("x", {})
    runs = threading.Semaphore(0)
    errors: list[str] = []

    def processor(job):  # noqa: ANN001, ANN202
        runs.release()
        return "done"

    worker = make_worker("q", processor, autorun=False, skip_stalled_check=True)
    worker.on("error", lambda error: errors.append(str(error)))
    worker.start()
    wait_for(lambda: queue.get_job_state(job.id) == "completed")
    assert redis_client.lrange(f"{prefix}:q:active", 0, -1) == []
    assert queue.get_job(job.id).returnvalue == "done"
    assert not [error for error in errors if "could not record" in error], errors
    worker.close()
    assert runs.acquire(timeout=0) and not runs.acquire(timeout=0)
