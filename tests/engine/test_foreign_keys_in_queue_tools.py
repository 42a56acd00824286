"""Another client's value at one of a queue's keys, met by the queue's reads and its
tools (pause, resume, drain, clean, retry_jobs, promote_jobs, obliterate): each raises
`ForeignKeyValue` naming the key, and a tool writes nothing (no job lost, none half
moved), except `obliterate`, which deletes everything under the queue's name."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import redis

from flowjobs.engine import ForeignKeyValue, Queue, Worker
from tests.helpers import wait_for

FOREIGN = "another client's value"


def _snapshot(client: redis.Redis, prefix: str, leave: str) -> dict[str, Any]:
    """Every key under `prefix` but `leave`, as DUMP has it (a job's hash, a state list)."""
    raw = redis.Redis(connection_pool=client.connection_pool)
    return {key: raw.dump(key) for key in client.scan_iter(f"{prefix}:*") if key != leave}


def _queue_of_every_state(queue: Queue, redis_url: str, prefix: str) -> None:
    """Three jobs in each of wait, delayed, prioritized, completed and failed."""
    worker = Worker("q", None, connection=redis_url, prefix=prefix)
    try:
        for outcome in ("completed", "failed"):
            for n in range(3):
                queue.add(outcome, {"n": n})
                job = worker.get_next_job("tok", block=False)
                if outcome == "completed":
                    job.move_to_completed("done", "tok")
                else:
                    job.move_to_failed(RuntimeError("boom"), "tok")
    finally:
        worker.close()
    for n in range(3):
        queue.add("waiting", {"n": n})
        queue.add("delayed", {"n": n}, delay=60_000)
        queue.add("prioritized", {"n": n}, priority=5)


READS: list[tuple[str, str, Callable[[Queue], Any]]] = [
    ("get_job_counts", "wait", lambda q: q.get_job_counts()),
    ("get_job_counts", "delayed", lambda q: q.count()),  # count's own read
    ("get_job_state", "completed", lambda q: q.get_job_state("1")),
    ("get_jobs", "failed", lambda q: q.get_jobs()),
    ("get_job_ids", "prioritized", lambda q: q.get_job_ids("prioritized")),
    ("get_counts_per_priority", "prioritized", lambda q: q.get_counts_per_priority([0, 5])),
    ("is_paused", "meta", lambda q: q.is_paused()),
    ("get_meta", "meta", lambda q: q.get_meta()),
]


@pytest.mark.parametrize(("doing", "suffix", "read"), READS, ids=[f"{r[0]}-{r[1]}" for r in READS])
def test_a_read_meeting_a_foreign_value_names_the_key(
    doing, suffix, read, queue, redis_client, prefix
):
    """Before: redis-py's WRONGTYPE (inside a pipeline: "Command # 3 (...) caused
    error"), naming no key or only a command."""
    queue.add("x", {"n": 1})
    key = f"{prefix}:q:{suffix}"
    redis_client.set(key, FOREIGN)
    with pytest.raises(ForeignKeyValue) as caught:
        read(queue)
    assert f"{doing}: {key} holds a string" in str(caught.value), str(caught.value)


TOOLS: list[tuple[str, str, Callable[[Queue], Any]]] = [
    ("promote_jobs", "wait", lambda q: q.promote_jobs()),
    ("promote_jobs", "meta", lambda q: q.promote_jobs()),
    ("retry_jobs", "wait", lambda q: q.retry_jobs("failed")),
    ("retry_jobs", "meta", lambda q: q.retry_jobs("completed")),
    ("drain", "delayed", lambda q: q.drain(delayed=True)),
    ("drain", "prioritized", lambda q: q.drain()),
    ("drain", "groups:ready", lambda q: q.drain()),
    ("clean", "meta", lambda q: q.clean(0, state="delayed")),
    ("clean", "prioritized", lambda q: q.clean(0, state="prioritized")),
    ("pause", "meta", lambda q: q.pause()),
    ("obliterate", "meta", lambda q: q.obliterate(force=True)),
]


@pytest.mark.parametrize(("doing", "suffix", "tool"), TOOLS, ids=[f"{t[0]}-{t[1]}" for t in TOOLS])
def test_a_tool_refused_by_a_foreign_value_writes_nothing(
    doing, suffix, tool, queue, redis_client, redis_url, prefix
):
    """Before: promote_jobs and retry_jobs took the jobs out of their set and then met a
    foreign `wait` (the jobs were in no state); with a foreign `meta` the promotion had
    changed a job's hash, and a clean had removed the jobs and then failed; a drain
    removed the waiting jobs and then failed at `delayed`."""
    _queue_of_every_state(queue, redis_url, prefix)
    key = f"{prefix}:q:{suffix}"
    redis_client.set(key, FOREIGN)
    before = _snapshot(redis_client, prefix, key)
    with pytest.raises(ForeignKeyValue) as caught:
        tool(queue)
    assert f"{doing}: {key} holds a string" in str(caught.value), str(caught.value)
    assert _snapshot(redis_client, prefix, key) == before
    assert redis_client.get(key) == FOREIGN


def test_resume_refused_by_a_foreign_wait_list_leaves_the_queue_paused(queue, redis_client, prefix):
    """Resume took the pause off and then met the foreign `wait`."""
    queue.add("x", {"n": 1}, priority=3)
    queue.pause()
    redis_client.set(f"{prefix}:q:wait", FOREIGN)
    with pytest.raises(ForeignKeyValue, match=f"resume: {prefix}:q:wait holds a string"):
        queue.resume()
    assert redis_client.hget(f"{prefix}:q:meta", "paused") == "1"


@pytest.mark.parametrize("suffix", ["active", "wait", "completed", "waiting-children", "repeat"])
def test_obliterate_deletes_a_foreign_value_under_the_queue_s_name(
    suffix, queue, redis_client, redis_url, prefix
):
    """obliterate deletes everything under the queue's name, another client's value
    included; before, it stopped at that key with WRONGTYPE, half done."""
    _queue_of_every_state(queue, redis_url, prefix)
    redis_client.set(f"{prefix}:q:{suffix}", FOREIGN)
    queue.obliterate()
    assert list(redis_client.scan_iter(f"{prefix}:q:*")) == []


def _job_in(state: str, queue: Queue, redis_url: str, prefix: str) -> Any:
    """A job in `state` (failed, delayed, prioritized or waiting)."""
    if state == "failed":
        worker = Worker("q", None, connection=redis_url, prefix=prefix)
        try:
            queue.add("x", {"n": 1})
            job = worker.get_next_job("tok", block=False)
            job.move_to_failed(RuntimeError("boom"), "tok")
        finally:
            worker.close()
        return queue.get_job(job.id)
    if state == "delayed":
        return queue.add("x", {"n": 1}, delay=60_000)
    if state == "prioritized":
        return queue.add("x", {"n": 1}, priority=3)
    return queue.add("x", {"n": 1})


JOB_OPERATIONS: list[tuple[str, str, str, Callable[[Any], Any]]] = [
    ("retry", "failed", "wait", lambda job: job.retry()),
    ("retry", "failed", "meta", lambda job: job.retry()),
    ("promote", "delayed", "wait", lambda job: job.promote()),
    ("promote", "delayed", "meta", lambda job: job.promote()),
    ("change_delay", "delayed", "meta", lambda job: job.change_delay(5_000)),
    ("change_priority", "prioritized", "meta", lambda job: job.change_priority(7)),
    ("change_priority", "waiting", "prioritized", lambda job: job.change_priority(7)),
    ("update_progress", "waiting", "meta", lambda job: job.update_progress(42)),
    ("remove", "waiting", "meta", lambda job: job.remove()),
]


@pytest.mark.parametrize(
    ("doing", "state", "suffix", "operation"),
    JOB_OPERATIONS,
    ids=[f"{o[0]}-{o[2]}" for o in JOB_OPERATIONS],
)
def test_a_job_operation_refused_by_a_foreign_value_writes_nothing(
    doing, state, suffix, operation, queue, redis_client, redis_url, prefix
):
    """Before: a retried failed job or a promoted delayed job left its set and then met a
    foreign `wait` (lost: in no state); with a foreign `meta` these moves, a changed
    delay or priority, a progress update and a removal were half done when its read
    (the queue's settings, the events stream's cap) failed."""
    job = _job_in(state, queue, redis_url, prefix)
    key = f"{prefix}:q:{suffix}"
    redis_client.delete(key)
    redis_client.set(key, FOREIGN)
    before = _snapshot(redis_client, prefix, key)
    with pytest.raises(ForeignKeyValue, match=f"{key} holds a string"):
        operation(job)
    assert _snapshot(redis_client, prefix, key) == before


def test_a_priority_counter_holding_no_number_is_restarted_after_the_waiting_jobs(
    queue, redis_client, prefix
):
    """Another client's text at `pc` failed every prioritized add and priority change,
    the change half done (the job out of `prioritized`, in no state). Now the counter
    goes on after the highest one in the set: jobs of one priority keep their order."""
    first = queue.add("x", {"n": 1}, priority=2)
    second = queue.add("x", {"n": 2}, priority=2)
    redis_client.set(f"{prefix}:q:pc", "another client's text")
    third = queue.add("x", {"n": 3}, priority=2)
    moved = queue.add("x", {"n": 4})
    redis_client.set(f"{prefix}:q:pc", "not a number again")
    queue.get_job(moved.id).change_priority(2)
    order = redis_client.zrange(f"{prefix}:q:prioritized", 0, -1)
    assert order == [first.id, second.id, third.id, moved.id]


def test_a_job_counter_holding_text_refuses_adds_by_name(
    queue, flow_producer, redis_client, prefix
):
    """Another client's text at `id` made every add fail with Redis's bare "value is not
    an integer"; a flow or bulk whose later job's queue had it was half written. Now the
    add is refused naming the key, before anything is written; the counter is not
    started again (it would hand out the ids of existing jobs)."""
    from flowjobs.engine import Flow

    redis_client.set(f"{prefix}:other:id", "another client's text")
    with pytest.raises(ForeignKeyValue, match=f"{prefix}:other:id holds a string that is not"):
        flow_producer.add(Flow("parent", "q", {}, children=[Flow("child", "other", {})]))
    with pytest.raises(ForeignKeyValue, match=f"{prefix}:other:id holds a string that is not"):
        flow_producer.add_bulk([Flow("x", "q", {}), Flow("y", "other", {})])
    assert redis_client.keys(f"{prefix}:*") == [f"{prefix}:other:id"]
    redis_client.set(f"{prefix}:q:id", "more text")
    with pytest.raises(ForeignKeyValue, match=f"{prefix}:q:id holds a string that is not"):
        queue.add("x", {"n": 1})
    assert redis_client.get(f"{prefix}:q:id") == "more text"


def test_rate_limit_ttl_and_a_grouped_removal_name_a_foreign_key(queue, redis_client, prefix):
    job = queue.add("x", {"n": 1}, group={"id": "g"})
    redis_client.set(f"{prefix}:q:meta", FOREIGN)
    with pytest.raises(ForeignKeyValue, match=f"get_rate_limit_ttl: {prefix}:q:meta holds"):
        queue.get_rate_limit_ttl()
    redis_client.delete(f"{prefix}:q:meta")
    group_wait = f"{prefix}:q:group:g:wait"
    redis_client.delete(group_wait)
    redis_client.set(group_wait, FOREIGN)
    with pytest.raises(ForeignKeyValue, match=f"{group_wait} holds a string"):
        job.remove()
    assert redis_client.exists(f"{prefix}:q:{job.id}")


@pytest.mark.parametrize(
    ("suffix", "read"),
    [
        ("processed", lambda job: job.get_children_values()),
        ("failed", lambda job: job.get_ignored_children_failures()),
        ("dependencies", lambda job: job.get_dependencies_count()),
        ("unsuccessful", lambda job: job.get_dependencies()),
    ],
)
def test_a_job_s_read_meeting_a_foreign_value_at_its_own_key_names_it(
    suffix, read, flow_producer, redis_client, prefix
):
    """A parent's children by outcome read through redis-py's WRONGTYPE, which names no
    key; now the error names the parent's key that holds another client's value."""
    from flowjobs.engine import Flow

    node = flow_producer.add(Flow("parent", "q", {}, children=[Flow("child", "q", {})]))
    key = f"{node.job.key}:{suffix}"
    redis_client.delete(key)
    redis_client.set(key, FOREIGN)
    with pytest.raises(ForeignKeyValue, match=f"{key} holds a string"):
        read(node.job)


def test_a_job_operation_meeting_a_foreign_value_at_its_own_key_names_it(
    queue, make_worker, redis_client
):
    """A log line added to a job whose `:logs` key holds another client's value: Redis's
    WRONGTYPE named no key, and the lookup knew only the queue's keys. Also through the
    async `alog` of an async processor."""
    job = queue.add("x", {"n": 1})
    expected = f"{job.key}:logs holds a string, not a list"
    redis_client.set(f"{job.key}:logs", FOREIGN)
    with pytest.raises(ForeignKeyValue, match=expected):
        job.log("a line")
    seen: list[BaseException] = []

    async def processor(running):  # noqa: ANN001, ANN202
        try:
            await running.alog("a line")
        except ForeignKeyValue as error:
            seen.append(error)
        return "done"

    make_worker("q", processor)
    wait_for(lambda: seen, message="the async processor's alog was not refused")
    assert expected in str(seen[0])


@pytest.mark.parametrize("asc", [True, False], ids=["oldest-first", "newest-first"])
def test_a_job_s_logs_read_by_its_queue_name_a_foreign_logs_key(asc, queue, redis_client):
    """`Queue.get_job_logs` (the admin's job page reads a job's log through it) met a
    job's `:logs` key holding another client's value with redis-py's WRONGTYPE, which
    names no key; now it names that key."""
    job = queue.add("x", {"n": 1})
    key = f"{job.key}:logs"
    redis_client.set(key, FOREIGN)
    with pytest.raises(ForeignKeyValue, match=f"get_job_logs: .*{key} holds a string, not a list"):
        queue.get_job_logs(job.id, asc=asc)
    assert redis_client.get(key) == FOREIGN


@pytest.mark.parametrize("suffix", ["wait", "prioritized", "pc", "marker"])
def test_a_delayed_job_s_priority_changes_beside_a_foreign_value_where_it_does_not_go(
    suffix, queue, redis_client, redis_url, prefix
):
    """A delayed job's new priority is only a field of its hash (it goes in line when its
    delay ends), yet `change_priority` was refused when a key of the line (`wait`,
    `prioritized`, the priority counter, the marker) held another client's value. Only
    the job's hash changes; the foreign value stays."""
    job = _job_in("delayed", queue, redis_url, prefix)
    key = f"{prefix}:q:{suffix}"
    redis_client.delete(key)
    redis_client.set(key, FOREIGN)
    job.change_priority(7)
    assert redis_client.hget(job.key, "priority") == "7"
    assert redis_client.zscore(f"{prefix}:q:delayed", job.id) is not None
    assert redis_client.get(key) == FOREIGN
