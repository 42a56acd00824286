"""Adding jobs: the stored layout (BullMQ's), ids, options and validation."""

from __future__ import annotations

import json

import pytest

from flowjobs.engine import InvalidJobData, InvalidJobOptions, InvalidQueueName, Queue


def keys_under(redis_client, prefix: str) -> set[str]:
    return set(redis_client.scan_iter(match=f"{prefix}:*"))


def test_add_writes_bullmq_hash_list_marker_and_events(queue, redis_client, prefix):
    job = queue.add(
        "send",
        {"to": "ann"},
        attempts=3,
        backoff=1000,
        keep_logs=5,
        remove_on_complete={"count": 10},
    )
    assert job.id == "1"
    stored = redis_client.hgetall(f"{prefix}:q:1")
    assert stored["name"] == "send"
    assert json.loads(stored["data"]) == {"to": "ann"}
    assert json.loads(stored["opts"]) == {
        "attempts": 3,
        "backoff": {"type": "fixed", "delay": 1000},
        "kl": 5,
        "removeOnComplete": {"count": 10},
    }
    assert stored["delay"] == "0" and stored["priority"] == "0"
    assert int(stored["timestamp"]) > 1_700_000_000_000
    assert redis_client.lrange(f"{prefix}:q:wait", 0, -1) == ["1"]
    assert redis_client.zrange(f"{prefix}:q:marker", 0, -1, withscores=True) == [("0", 0.0)]
    events = [fields for _, fields in redis_client.xrange(f"{prefix}:q:events")]
    assert events == [
        {"event": "added", "jobId": "1", "name": "send"},
        {"event": "waiting", "jobId": "1"},
    ]
    assert redis_client.hget(f"{prefix}:q:meta", "opts.maxLenEvents") == "10000"


def test_auto_ids_count_every_add(queue):
    assert [queue.add("a").id for _ in range(3)] == ["1", "2", "3"]
    queue.add("custom", job_id="my-job")
    assert queue.add("a").id == "5"


def test_existing_custom_id_returns_existing_job_and_emits_duplicated(queue, redis_client, prefix):
    first = queue.add("a", {"v": 1}, job_id="dup")
    second = queue.add("a", {"v": 2}, job_id="dup")
    assert first.id == second.id == "dup"
    assert json.loads(redis_client.hget(f"{prefix}:q:dup", "data")) == {"v": 1}
    assert redis_client.llen(f"{prefix}:q:wait") == 1
    events = [f["event"] for _, f in redis_client.xrange(f"{prefix}:q:events")]
    assert events[-1] == "duplicated"


@pytest.mark.parametrize("data", [{1, 2}, {"x": float("nan")}, {"b": b"bytes"}, object()])
def test_non_json_data_raises_and_writes_nothing(queue, redis_client, prefix, data):
    with pytest.raises(InvalidJobData, match="JSON"):
        queue.add("bad", data)
    assert keys_under(redis_client, prefix) == set()


def test_circular_data_is_named_as_such_and_writes_nothing(queue, redis_client, prefix):
    data: dict = {"a": [1]}
    data["a"].append(data)
    with pytest.raises(InvalidJobData, match="Circular reference"):
        queue.add("bad", data)
    assert keys_under(redis_client, prefix) == set()
    assert queue.add("fine", {"a": [1, {"b": 2}]}).data == {"a": [1, {"b": 2}]}


@pytest.mark.parametrize(
    ("stored", "data", "problem"),
    [
        (' {"n": 1}\n', {"n": 1}, None),  # another producer's spacing: JSON all the same
        ('{"n": 1} x', '{"n": 1} x', "Extra data"),
        ("", "", "Expecting value"),
        ("[1, 2", "[1, 2", "Expecting"),
    ],
)
def test_data_is_read_as_json_reads_it(queue, stored, data, problem):
    queue.client.hset(queue.keys.job("foreign"), mapping={"name": "f", "data": stored})
    job = queue.get_job("foreign")
    assert job.data == data
    assert (job.data_error is None) if problem is None else (problem in job.data_error)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"priority": 2_097_152}, "priority"),
        ({"priority": -1}, "priority"),
        ({"delay": -5}, "delay"),
        ({"attempts": "3"}, "attempts"),
        ({"backoff": {"type": "fixed", "delay": 10, "jitter": 2}}, "jitter"),
        ({"backoff": "soon"}, "backoff"),
        ({"job_id": "12"}, "job_id"),
        ({"job_id": "0"}, "reserved"),
        ({"job_id": "a:b"}, "contains"),
        ({"remove_on_complete": "yes"}, "remove_on_complete"),
        ({"retries": 3}, "unknown option"),
        (
            {"fail_parent_on_failure": True, "ignore_dependency_on_failure": True},
            "one child",
        ),
    ],
)
def test_invalid_options_raise_before_any_write(queue, redis_client, prefix, options, message):
    with pytest.raises(InvalidJobOptions, match=message):
        queue.add("job", {}, **options)
    assert keys_under(redis_client, prefix) == set()


def test_bad_queue_names_are_refused(redis_url):
    with pytest.raises(InvalidQueueName, match="colon"):
        Queue("a:b", connection=redis_url)
    with pytest.raises(InvalidQueueName):
        Queue("q", connection=redis_url, prefix="x:y")


def test_add_bulk_is_all_or_nothing(queue, redis_client, prefix):
    with pytest.raises(InvalidJobOptions, match="priority"):
        queue.add_bulk([{"name": "a", "data": {"i": 1}}, {"name": "b", "opts": {"priority": -1}}])
    assert keys_under(redis_client, prefix) == set()
    # a runtime precondition (missing parent) also leaves nothing behind
    from flowjobs.engine import ParentJobNotFound

    with pytest.raises(ParentJobNotFound):
        queue.add_bulk(
            [
                {"name": "a"},
                {"name": "b", "opts": {"parent": {"id": "nope", "queue": "q"}}},
            ]
        )
    assert keys_under(redis_client, prefix) == set()
    jobs = queue.add_bulk([{"name": "a", "data": {"i": i}} for i in range(5)])
    assert [j.id for j in jobs] == ["1", "2", "3", "4", "5"]
    assert queue.get_job_counts("waiting") == {"waiting": 5}


def test_priority_lifo_and_delay_placement(queue, redis_client, prefix):
    queue.add("p5", priority=5)
    queue.add("p5b", priority=5)
    queue.add("p1", priority=1)
    queue.add("lifo", lifo=True)
    queue.add("fifo")
    delayed = queue.add("later", delay=60_000)
    scores = dict(redis_client.zrange(f"{prefix}:q:prioritized", 0, -1, withscores=True))
    assert scores == {"1": 5 * 2**32 + 1, "2": 5 * 2**32 + 2, "3": 1 * 2**32 + 3}
    assert redis_client.lrange(f"{prefix}:q:wait", 0, -1) == ["5", "4"]
    due = delayed.timestamp + 60_000
    assert redis_client.zscore(f"{prefix}:q:delayed", "6") == due * 4096
    assert redis_client.zscore(f"{prefix}:q:marker", "1") == due
    assert queue.get_job_state("6") == "delayed"
    assert queue.get_job_state("3") == "prioritized"
    assert queue.get_job_state("nope") == "unknown"


def test_delayed_jobs_with_same_due_keep_fifo_order(queue, redis_client, prefix):
    ts = 1_800_000_000_000
    for i in range(3):
        queue.add(f"d{i}", delay=1000, timestamp=ts)
    members = redis_client.zrange(f"{prefix}:q:delayed", 0, -1, withscores=True)
    assert [m for m, _ in members] == ["1", "2", "3"]
    assert [s - (ts + 1000) * 4096 for _, s in members] == [0, 1, 2]


def test_default_job_options_are_merged(make_queue):
    queue = make_queue("defaults", default_job_options={"attempts": 4, "remove_on_fail": True})
    job = queue.add("x", {}, attempts=2)
    assert job.opts == {"attempts": 2, "removeOnFail": True}


def test_default_job_options_are_checked_once_and_a_change_is_seen(make_queue, redis_client):
    queue = make_queue(
        "checked-defaults",
        default_job_options={"remove_on_complete": {"age": 60, "count": 10}, "priority": 5},
    )
    first = queue.add("x", {})
    assert first.opts == {
        "attempts": 0,
        "removeOnComplete": {"age": 60, "count": 10},
        "priority": 5,
    }
    assert redis_client.zscore(f"{queue.keys.qualified}:prioritized", first.id) is not None
    # a job's stored options are its own: changing them changes no later job
    first.opts["removeOnComplete"]["age"] = 1
    # an option given, None included, replaces its default
    second = queue.add("x", {}, remove_on_complete=None, priority=None)
    assert second.opts == {"attempts": 0}
    assert redis_client.lpos(f"{queue.keys.qualified}:wait", second.id) is not None
    assert queue.add("x", {}).opts["removeOnComplete"] == {"age": 60, "count": 10}
    # defaults changed after the queue was made are checked and used
    queue.default_job_options["remove_on_complete"]["count"] = 3
    assert queue.add("x", {}).opts["removeOnComplete"] == {"age": 60, "count": 3}
    queue.default_job_options["attempts"] = -1
    with pytest.raises(InvalidJobOptions, match="attempts must be 0"):
        queue.add("x", {})


@pytest.mark.parametrize(
    ("option", "value", "problem"),
    [
        ("group", {"id": "g", 1: "x"}, "object key 1 is a int"),
        ("telemetry", {"metadata": float("nan")}, "must be JSON-serialisable"),
        ("repeat", {"every": 1000, "tz": object()}, "must be JSON-serialisable"),
    ],
)
def test_options_stored_as_given_are_checked_as_json_before_anything_is_written(
    queue, redis_client, option, value, problem
):
    with pytest.raises(InvalidJobData, match=f'option {option} of job "x".*{problem}'):
        queue.add("x", {}, **{option: value})
    assert redis_client.keys(f"{queue.keys.qualified}:*") == []
