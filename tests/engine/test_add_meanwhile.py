"""Work done while Redis writes an add: `Queue.add_with(..., meanwhile=...)` and the `Job`s
`add_encoded` builds run after the script call is sent and before its answer is read."""

from __future__ import annotations

import time

import pytest

from flowjobs.engine import scripts


def _wait_for_key(client, key: str, timeout: float = 5.0) -> bool:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if client.exists(key):
            return True
    return False


def test_meanwhile_runs_once_the_add_is_sent_and_gets_the_encoded_job(queue, redis_client):
    """The job appears in Redis while `meanwhile` runs: the call went out before it (had it
    run first, the job could not appear until it returned)."""
    scripts.load_all(queue.client)  # else the first send is refused (NOSCRIPT) and resent
    seen = []

    def meanwhile(encoded):  # noqa: ANN001, ANN202
        seen.append(
            (encoded.name, encoded.data_json, _wait_for_key(redis_client, queue.keys.job("1")))
        )

    job = queue.add_with("report", {"n": 1}, {"attempts": 2}, meanwhile=meanwhile)
    assert seen == [("report", '{"n":1}', True)]
    assert (job.id, job.name, job.data, job.opts["attempts"]) == ("1", "report", {"n": 1}, 2)
    assert queue.get_job("1").data == {"n": 1}


def test_jobs_built_during_the_call_carry_the_ids_redis_gave(queue):
    first, second = queue.add_bulk([("a", {"n": 1}), ("b", {"n": 2})])
    assert [(first.id, first.name), (second.id, second.name)] == [("1", "a"), ("2", "b")]
    given = queue.add("c", {"n": 3}, job_id="mine")
    assert given.id == "mine"
    deduplicated = [
        queue.add("d", {"n": n}, deduplication={"id": "same"}) for n in (4, 5)
    ]  # the second is the first job: its id, though its Job was built before the answer
    assert deduplicated[0].id == deduplicated[1].id == "4"
    assert queue.get_job("4").data == {"n": 4}


def test_a_meanwhile_that_raises_leaves_no_answer_for_the_next_add(queue, redis_client):
    """The call was sent: the job is written, the error is the caller's, and the
    connection whose answer went unread is not used again (the next add must get its own
    id, not the first one's answer)."""

    def broken(encoded):  # noqa: ANN001, ANN202
        raise RuntimeError("meanwhile failed")

    with pytest.raises(RuntimeError, match="meanwhile failed"):
        queue.add_with("x", {"n": 1}, {}, meanwhile=broken)
    assert _wait_for_key(redis_client, queue.keys.job("1"))
    job = queue.add("x", {"n": 2})
    assert job.id == "2"
    assert queue.get_job("2").data == {"n": 2}


def test_meanwhile_runs_before_a_script_reload_and_not_again(queue, redis_client):
    """After SCRIPT FLUSH the first send is refused (NOSCRIPT) and resent with the script
    loaded: `meanwhile` ran once, and the job is written once."""
    queue.add("x", {"n": 0})
    redis_client.script_flush()
    runs = []
    job = queue.add_with("x", {"n": 1}, {}, meanwhile=lambda encoded: runs.append(encoded.name))
    assert runs == ["x"]
    assert job.id == "2"
    assert queue.get_job_counts("waiting") == {"waiting": 2}
    assert redis_client.script_exists(scripts.source("add_jobs")[1]) == [True]
