"""Property tests of the producer API with random, often bad, input.

Every call either succeeds and the job read back from Redis equals what was added,
or raises a `FlowJobsError` subclass that names the problem, having written
nothing: the set of keys under the test's prefix (and each key's content) is the
same before and after.
"""

from __future__ import annotations

import itertools
import json
import math
import os
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from flowjobs.engine import Flow, FlowJobsError, FlowProducer, Queue
from flowjobs.engine.options import MAX_PRIORITY
from tests.helpers import delete_prefixed_keys

FUZZ = settings(
    # ~200 examples in all by default; FLOWJOBS_FUZZ_EXAMPLES=2000 for a deeper search
    max_examples=int(os.environ.get("FLOWJOBS_FUZZ_EXAMPLES", "70")),
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# --- strategies -----------------------------------------------------------------------------

# text with the awkward parts of Unicode: NUL, controls, astral planes (no lone surrogates)
awkward_text = st.text(st.characters(codec="utf-8"), max_size=12)
plain_text = st.text(max_size=12)
safe_int = st.integers(min_value=-(2**53) + 1, max_value=2**53 - 1)
json_scalars = (
    st.none()
    | st.booleans()
    | safe_int
    | st.floats(allow_nan=False, allow_infinity=False)
    | plain_text
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(plain_text, inner, max_size=4),
    max_leaves=12,
)
not_json = st.one_of(
    st.sets(st.integers(), min_size=1, max_size=3),
    st.binary(min_size=1, max_size=8),
    st.sampled_from([math.nan, math.inf, -math.inf]),
    st.builds(object),
    st.complex_numbers(allow_nan=False, allow_infinity=False),
    st.dictionaries(st.integers() | st.booleans(), json_scalars, min_size=1, max_size=2),
)
bad_data = st.one_of(
    not_json,
    st.lists(not_json, min_size=1, max_size=2),
    st.dictionaries(plain_text, not_json, min_size=1, max_size=2),
)
good_data = st.one_of(
    json_values,
    json_values,
    st.integers(min_value=2**53, max_value=2**80),  # valid JSON; JavaScript rounds them
    st.tuples(json_scalars, json_scalars),  # JSON arrays: read back as lists
)
good_names = st.one_of(st.text(min_size=1, max_size=12), awkward_text.filter(bool))
bad_names = st.one_of(
    st.sampled_from(["", None, 7, b"x"]),
    st.text(st.characters(categories=["Cs"]), min_size=1, max_size=2),
)
valid_job_ids = st.one_of(
    awkward_text.map(lambda t: "id" + t.replace(":", "_")),
    st.sampled_from(["a:b:c", "repeat:s:1", "007", "-5", "x" * 300, " "]),
)
bad_job_ids = st.one_of(
    st.sampled_from(["", "0", "0:x", "a:b", "a:b:c:d", "12", True, 1.5, None]),
    st.lists(st.integers(), max_size=2),
    st.text(st.characters(categories=["Cs"]), min_size=1, max_size=2),
)
bad_numbers = st.one_of(
    st.integers(max_value=-1),
    st.sampled_from([math.nan, math.inf, 1.5, True, "10", [], 2**64]),
)
valid_keep = st.one_of(
    st.booleans(),
    st.integers(min_value=0, max_value=10**6),
    st.fixed_dictionaries(
        {},
        optional={
            "age": st.integers(min_value=0, max_value=10**6),
            "count": st.integers(min_value=0, max_value=10**6),
        },
    ),
)
valid_backoff = st.one_of(
    st.integers(min_value=0, max_value=10**6),
    st.fixed_dictionaries(
        {"type": st.sampled_from(["fixed", "exponential", "custom"])},
        optional={
            "delay": st.integers(min_value=0, max_value=10**6),
            "jitter": st.floats(min_value=0, max_value=1),
        },
    ),
)
valid_options = st.fixed_dictionaries(
    {},
    optional={
        "job_id": valid_job_ids,
        "delay": st.one_of(st.integers(0, 10**7), st.sampled_from([2**41, 2**53 - 1])),
        "priority": st.one_of(st.integers(0, MAX_PRIORITY), st.sampled_from([MAX_PRIORITY])),
        "lifo": st.booleans(),
        "attempts": st.integers(0, 2**31),
        "backoff": valid_backoff,
        "remove_on_complete": valid_keep,
        "remove_on_fail": valid_keep,
        "keep_logs": st.integers(0, 10**6),
        "stacktrace_limit": st.integers(0, 100),
        "timestamp": st.one_of(st.integers(1, 2**41), st.sampled_from([2**53 - 1])),
        "fail_parent_on_failure": st.booleans(),
        "deduplication": st.fixed_dictionaries(
            {"id": st.text(min_size=1, max_size=8)}, optional={"ttl": st.integers(1, 10**6)}
        ),
    },
)
one_bad_option = st.one_of(
    st.tuples(st.just("job_id"), bad_job_ids),
    st.tuples(st.sampled_from(["delay", "attempts", "keep_logs", "timestamp"]), bad_numbers),
    st.tuples(st.just("priority"), st.sampled_from([-1, MAX_PRIORITY + 1, 2**64, 0.5, "1"])),
    st.tuples(
        st.just("backoff"),
        st.one_of(
            bad_numbers,
            st.fixed_dictionaries({"type": st.sampled_from(["", 3, None])}),
            st.fixed_dictionaries({"type": st.just("fixed"), "delay": bad_numbers}),
            st.fixed_dictionaries({"type": st.just("fixed"), "jitter": st.sampled_from([-0.1, 2])}),
            st.fixed_dictionaries({"type": st.just("fixed"), "extra": st.integers()}),
        ),
    ),
    st.tuples(
        st.sampled_from(["remove_on_complete", "remove_on_fail"]),
        st.one_of(bad_numbers, st.just({"bogus": 1}), st.just({"age": -1}), st.just("yes")),
    ),
    st.tuples(
        st.just("parent"),
        st.one_of(
            st.fixed_dictionaries(
                {"id": st.text(min_size=1, max_size=5), "queue": st.just("nope")}
            ),
            st.integers(),
            st.just({"id": "x"}),
        ),
    ),
    st.tuples(
        st.just("deduplication"), st.sampled_from([{}, {"id": ""}, {"id": "d", "ttl": 0}, 5])
    ),
    st.tuples(
        st.sampled_from(["unknown_option", "Delay", "jobId", "remove_on_completed"]), st.integers()
    ),
)


FAULTS = ("none", "none", "none", "name", "data", "option")


@st.composite
def add_calls(draw: st.DrawFn) -> tuple[Any, Any, dict[str, Any]]:
    """(name, data, options) of one add: valid half of the time, otherwise with one
    fault (a bad name, non-JSON data, or one bad option) among valid values."""
    fault = draw(st.sampled_from(FAULTS))
    name = draw(bad_names if fault == "name" else good_names)
    data = draw(bad_data if fault == "data" else good_data)
    opts = draw(valid_options)
    if fault == "option":
        key, value = draw(one_bad_option)
        opts[key] = value
    return name, data, opts


# --- helpers ----------------------------------------------------------------------------------


def as_json(value: Any) -> Any:
    """What JSON makes of a value: tuples become lists (the documented mapping)."""
    if isinstance(value, tuple | list):
        return [as_json(v) for v in value]
    if isinstance(value, dict):
        return {k: as_json(v) for k, v in value.items()}
    return value


def fresh_snapshot(client: redis.Redis, prefix: str) -> dict[str, Any]:
    """Empties the prefix (earlier examples' jobs) and returns its snapshot."""
    delete_prefixed_keys(client, prefix)
    return snapshot(client, prefix)


def snapshot(client: redis.Redis, prefix: str) -> dict[str, Any]:
    """Every key under the prefix with a dump of its value (DUMP: type-independent).
    Keys with a time to live (deduplication ids) are left out: they go by themselves."""
    keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.pttl(key)
        pipe.dump(key)
    answers = pipe.execute()
    return {
        key: dump
        for key, ttl, dump in zip(keys, answers[::2], answers[1::2], strict=True)
        if ttl == -1
    }


def check_error(error: FlowJobsError) -> None:
    event(f"refused: {type(error).__name__}")
    message = str(error)
    assert message and len(message) > 10, f"unhelpful message: {message!r}"


@pytest.fixture
def raw_client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)  # bytes: DUMP values are binary
    yield client
    client.close()


_queue_numbers = itertools.count()


def fresh_queue_name() -> str:
    # a queue per example, so an id chosen by one example never meets another's job
    return f"q{next(_queue_numbers)}"


# --- properties -------------------------------------------------------------------------------


def expected_state(opts: dict[str, Any]) -> str:
    if opts.get("delay"):
        return "delayed"
    if opts.get("priority"):
        return "prioritized"
    return "waiting"


@FUZZ
@given(call=add_calls())
def test_add_round_trips_or_refuses_cleanly(redis_url, prefix, raw_client, call):
    name, data, opts = call
    queue = Queue(fresh_queue_name(), connection=redis_url, prefix=prefix)
    before = fresh_snapshot(raw_client, prefix)
    try:
        job = queue.add(name, data, **opts)
    except FlowJobsError as error:
        check_error(error)
        assert snapshot(raw_client, prefix) == before, f"{type(error).__name__} wrote keys"
        return
    finally:
        queue.close()
    event("added")
    queue = Queue(queue.name, connection=redis_url, prefix=prefix)
    try:
        stored = queue.get_job(job.id)
        assert stored is not None
        assert stored.name == name
        assert stored.data == as_json({} if data is None else data)
        assert stored.data_error is None
        assert stored.opts == json.loads(json.dumps(job.opts))
        assert stored.timestamp == job.timestamp
        assert stored.delay == (opts.get("delay") or 0)
        assert stored.priority == (opts.get("priority") or 0)
        if opts.get("job_id") is not None:
            assert stored.id == str(opts["job_id"])
        assert queue.get_job_state(job.id) == expected_state(opts)
    finally:
        queue.close()


@FUZZ
@given(
    jobs=st.lists(
        st.one_of(
            add_calls().map(lambda c: {"name": c[0], "data": c[1], "opts": c[2]}),
            add_calls().map(lambda c: (c[0], c[1])),
            st.sampled_from([3, None, {"name": "x", "bogus": 1}]),
        ),
        max_size=4,
    )
)
def test_add_bulk_is_all_or_nothing(redis_url, prefix, raw_client, jobs):
    queue = Queue(fresh_queue_name(), connection=redis_url, prefix=prefix)
    before = fresh_snapshot(raw_client, prefix)
    try:
        added = queue.add_bulk(jobs)
    except FlowJobsError as error:
        check_error(error)
        assert snapshot(raw_client, prefix) == before, f"{type(error).__name__} wrote keys"
        return
    event(f"added {len(added)}")
    try:
        assert len(added) == len(jobs)
        for job in added:
            # a repeated job_id within the batch keeps the first job (BullMQ: "duplicated")
            first = next(i for i, j in zip(jobs, added, strict=True) if j.id == job.id)
            name, data = (first["name"], first.get("data")) if isinstance(first, dict) else first
            stored = queue.get_job(job.id)
            assert stored is not None and stored.name == name
            assert stored.data == as_json({} if data is None else data)
    finally:
        queue.close()


valid_queues = st.sampled_from(["alpha", "beta", "gamma"])
bad_queues = st.sampled_from(["", "a:b", "\ud800"])
NODE_FAULTS = ("none",) * 16 + ("name", "data", "option", "queue")


@st.composite
def flow_trees(draw: st.DrawFn, depth: int = 0) -> Any:
    children = []
    if depth < 2:
        children = draw(st.lists(flow_trees(depth + 1), max_size=3))
    node_opts = draw(
        st.fixed_dictionaries(
            {},
            optional={
                "priority": st.integers(0, MAX_PRIORITY),
                "delay": st.integers(min_value=0, max_value=5000),
                "attempts": st.integers(0, 10),
                "fail_parent_on_failure": st.booleans(),
            },
        )
    )
    fault = draw(st.sampled_from(NODE_FAULTS))
    if fault == "option":
        key, value = draw(one_bad_option)
        node_opts[key] = value
    node = {
        "name": draw(bad_names if fault == "name" else good_names),
        "queue_name": draw(bad_queues if fault == "queue" else valid_queues),
        "data": draw(bad_data if fault == "data" else good_data),
        "opts": node_opts,
        "children": children,
    }
    if draw(st.booleans()):
        node = Flow(**node)
    return node


def node_fields(node: Any) -> tuple[str, str, Any, list]:
    if isinstance(node, Flow):
        return node.name, node.queue_name, node.data, node.children
    return node["name"], node["queue_name"], node.get("data"), node.get("children") or []


@FUZZ
@given(tree=flow_trees())
def test_flow_add_round_trips_or_refuses_cleanly(redis_url, prefix, raw_client, tree):
    producer = FlowProducer(connection=redis_url, prefix=prefix)
    before = fresh_snapshot(raw_client, prefix)
    try:
        try:
            created = producer.add(tree)
        except FlowJobsError as error:
            check_error(error)
            assert snapshot(raw_client, prefix) == before, f"{type(error).__name__} wrote keys"
            return

        def compare(node: Any, made: Any, parent_key: str | None) -> None:
            name, queue_name, data, children = node_fields(node)
            queue = producer.queue(queue_name)
            stored = queue.get_job(made.job.id)
            assert stored is not None
            assert (stored.name, stored.data) == (name, as_json({} if data is None else data))
            assert stored.parent_key == parent_key
            if children:
                assert queue.get_job_state(stored.id) == "waiting-children"
                pending = producer.client.smembers(f"{stored.key}:dependencies")
                assert pending == {child.job.key for child in made.children}
            assert len(made.children) == len(children)
            for child, child_made in zip(children, made.children, strict=True):
                compare(child, child_made, stored.key)

        event(f"added a tree of {len(list(created.walk()))}")
        compare(tree, created, None)
        read = producer.get_flow(created.job.queue_name, created.job.id, depth=5)
        assert read is not None
        assert sorted(n.job.key for n in read.walk()) == sorted(n.job.key for n in created.walk())
    finally:
        producer.close()
