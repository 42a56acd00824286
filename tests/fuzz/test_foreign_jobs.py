"""Jobs written by hand, as a foreign or buggy producer might: missing fields, data
or options that are not JSON, odd option values, a huge payload. The worker fails
what it cannot run, with a reason that says why, and goes on with the rest."""

from __future__ import annotations

import json
import logging
import threading
import time

import pytest
import redis
from hypothesis import given, settings
from hypothesis import strategies as st

from flowjobs.engine import Job, Queue, UnrecoverableError, Worker
from tests.helpers import wait_for

HUGE_BYTES = 5 * 1024 * 1024

# id -> the job hash a foreign producer wrote (None: the id is pushed with no hash)
FOREIGN_JOBS: dict[str, dict[str, str] | None] = {
    "ghost": None,
    "bare": {"data": "{}"},
    "no-data": {"name": "x", "opts": "{}", "timestamp": "1"},
    "bad-data": {"name": "x", "data": "{not json", "opts": "{}", "timestamp": "1"},
    "bad-opts": {"name": "x", "data": "{}", "opts": "[1, 2", "timestamp": "1"},
    "list-opts": {"name": "x", "data": "{}", "opts": "[1, 2]", "timestamp": "1"},
    "odd-opts": {
        "name": "x",
        "data": '{"a": 1}',
        "opts": json.dumps(
            {
                "attempts": "three",
                "backoff": "weird",
                "removeOnComplete": "yes",
                "kl": -5,
                "stackTraceLimit": "x",
                "somethingNew": {"nested": [1, 2]},
            }
        ),
        "timestamp": "1",
    },
    "bad-numbers": {
        "name": "x",
        "data": "{}",
        "opts": "{}",
        "timestamp": "soon",
        "delay": "x",
        "priority": "-3",
        "atm": "NaN",
        "ats": "many",
    },
    "bad-parent": {
        "name": "x",
        "data": "{}",
        "opts": "{}",
        "timestamp": "1",
        "parentKey": "nowhere:at:all",
        "parent": "{broken",
    },
}
# outcome expected per foreign job: "completed", or the text the failed reason must hold
EXPECTED = {
    "ghost": "no job hash",
    "bare": "completed",
    "no-data": "completed",
    "bad-data": 'field "data" is not valid JSON',
    "bad-opts": 'field "opts" is not valid JSON',
    "list-opts": 'field "opts" is a JSON list, not an object',
    "odd-opts": "completed",
    "bad-numbers": "completed",
    "bad-parent": "completed",
    "huge": "completed",
}


@pytest.fixture
def foreign_queue(redis_url: str, prefix: str):
    queue = Queue("foreign", connection=redis_url, prefix=prefix)
    yield queue
    queue.close()


def push_by_hand(queue: Queue, job_id: str, fields: dict[str, str] | None) -> None:
    pipe = queue.client.pipeline(transaction=True)
    if fields is not None:
        pipe.hset(queue.keys.job(job_id), mapping=fields)
    pipe.lpush(queue.keys.key("wait"), job_id)
    pipe.zadd(queue.keys.marker, {"0": 0})
    pipe.execute()


def test_worker_fails_what_it_cannot_run_and_goes_on(foreign_queue, redis_url, prefix):
    queue = foreign_queue
    huge = json.dumps({"blob": "x" * HUGE_BYTES})
    for job_id, fields in FOREIGN_JOBS.items():
        push_by_hand(queue, job_id, fields)
    push_by_hand(
        queue,
        "huge",
        {"name": "big", "data": huge, "opts": "{}", "timestamp": str(int(time.time() * 1000))},
    )
    good = [queue.add("good", {"n": n}) for n in range(5)]
    seen = threading.Event()

    def process(job):
        seen.set()
        return {"size": len(json.dumps(job.data))}

    worker = Worker(
        "foreign",
        process,
        connection=redis_url,
        prefix=prefix,
        concurrency=3,
        lock_duration=5000,
        stalled_interval=500,
        drain_delay=0.5,
    )
    try:
        expected_ids = {*EXPECTED, *(job.id for job in good)}

        def finished() -> bool:
            done = set(queue.get_job_ids(["completed", "failed"]))
            return expected_ids <= done

        wait_for(finished, timeout=30, message=f"not all finished: {queue.get_job_counts()}")
    finally:
        worker.close(timeout=10)

    for job in good:
        assert queue.get_job(job.id).returnvalue == {"size": len(json.dumps({"n": job.data["n"]}))}
    for job_id, outcome in EXPECTED.items():
        state = queue.get_job_state(job_id)
        stored = queue.get_job(job_id)
        if outcome == "completed":
            assert state == "completed", (job_id, state, stored and stored.failed_reason)
        else:
            assert state == "failed", (job_id, state)
            assert outcome in stored.failed_reason, (job_id, stored.failed_reason)
            assert f'"{job_id}"' in stored.failed_reason
    assert queue.get_job("huge").returnvalue == {"size": len(huge)}
    counts = queue.get_job_counts()
    assert counts["active"] == counts["waiting"] == 0


def test_a_job_key_of_the_wrong_type_is_dropped_and_reported(
    foreign_queue, redis_url, prefix, caplog
):
    """A foreign producer wrote a list where a job hash should be, and queued its id; a
    string sits under another id that is already in active (a crashed foreign worker).
    Fetching and the stalled check drop both ids with a `failed` event naming the
    problem, no script fails half-way, and the other jobs complete."""
    queue = foreign_queue
    queue.client.rpush(queue.keys.job("wrong-type"), "not", "a", "hash")
    queue.client.lpush(queue.keys.key("wait"), "wrong-type")
    queue.client.set(queue.keys.job("stuck-string"), "not a hash")
    queue.client.lpush(queue.keys.key("active"), "stuck-string")
    good = [queue.add("good", {"n": n}) for n in range(6)]
    worker = Worker(
        "foreign",
        lambda job: job.data["n"],
        connection=redis_url,
        prefix=prefix,
        concurrency=2,
        lock_duration=1000,
        stalled_interval=300,
        drain_delay=0.5,
    )
    try:
        wait_for(
            lambda: all(queue.get_job_state(job.id) == "completed" for job in good),
            timeout=20,
            message=f"the good jobs did not complete: {queue.get_job_counts()}",
        )
        wait_for(
            lambda: queue.client.lrange(queue.keys.key("active"), 0, -1) == [],
            timeout=20,
            message="the stalled check did not drop the string key's id from active",
        )
        assert worker.is_running()
    finally:
        worker.close(timeout=10)
    assert [queue.get_job(job.id).returnvalue for job in good] == list(range(6))
    assert queue.client.lrange(queue.keys.key("wait"), 0, -1) == []
    failed = {
        fields["jobId"]: fields
        for _, fields in queue.client.xrange(queue.keys.key("events"))
        if fields.get("event") == "failed"
    }
    assert failed["wrong-type"]["failedReason"] == "the job key holds a list, not a job hash"
    assert failed["wrong-type"]["prev"] == "waiting"
    assert failed["stuck-string"]["failedReason"] == "the job key holds a string, not a job hash"
    assert failed["stuck-string"]["prev"] == "active"
    # the foreign keys themselves are left alone
    assert queue.client.type(queue.keys.job("wrong-type")) == "list"
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


DEEP = 20_000  # far past Python's recursion limit, and past flowjobs' MAX_JSON_DEPTH


def _raw_job(**fields: bytes) -> dict[bytes, bytes]:
    job = {b"name": b"x", b"data": b"{}", b"opts": b"{}", b"timestamp": b"1"}
    job.update({name.encode(): value for name, value in fields.items()})
    return job


# id -> (the raw job hash, the field the failed reason must name)
RAW_JOBS: dict[bytes, tuple[dict[bytes, bytes], str]] = {
    b"utf8-name": (_raw_job(name=b"caf\xe9"), '"name"'),
    b"utf8-data": (_raw_job(data=b'{"a": "\xff\xfe"}'), '"data"'),
    b"utf8-opts": (_raw_job(opts=b'{"attempts": "\xc3"}'), '"opts"'),
    b"utf8-timestamp": (_raw_job(timestamp=b"1\x80"), '"timestamp"'),
    b"utf8-stacktrace": (_raw_job(stacktrace=b'["\xff"]'), '"stacktrace"'),
    b"utf8-parent": (_raw_job(parentKey=b"a:b:\xff", parent=b'{"id": "\xff"}'), '"parent'),
    b"utf8-field-name": ({**_raw_job(), b"odd\xff": b"1"}, "odd\\xff"),
    b"utf8-id-\xff": (_raw_job(), "id"),
    b"deep-data": (_raw_job(data=b"[" * DEEP + b"]" * DEEP), '"data"'),
    b"deep-opts": (_raw_job(opts=b'{"a":' * DEEP + b"1" + b"}" * DEEP), '"opts"'),
}
# progress is shown, not used: past the depth limit it stays text, and the job runs
DEEP_PROGRESS = _raw_job(progress=b"[" * DEEP + b"]" * DEEP)


def test_raw_bytes_and_deep_json_fail_only_their_own_job(foreign_queue, redis_url, prefix):
    """Invalid UTF-8 in any field (or in the id, or in a field's name) and JSON nested
    far deeper than Python's recursion limit: each such job fails with a reason naming
    the field, the worker keeps running, and the good jobs beside them complete."""
    queue = foreign_queue
    raw = redis.Redis.from_url(redis_url)
    try:
        base = f"{prefix}:foreign:".encode()
        pipe = raw.pipeline(transaction=True)
        for job_id, (fields, _) in RAW_JOBS.items():
            pipe.hset(base + job_id, mapping=fields)
        pipe.hset(base + b"deep-progress", mapping=DEEP_PROGRESS)
        pipe.lpush(base + b"wait", *RAW_JOBS, b"deep-progress")
        pipe.zadd(base + b"marker", {"0": 0})
        pipe.execute()
        good = [queue.add("good", {"n": n}) for n in range(6)]
        worker = Worker(
            "foreign",
            lambda job: job.data.get("n"),
            connection=redis_url,
            prefix=prefix,
            concurrency=3,
            lock_duration=2000,
            stalled_interval=500,
            drain_delay=0.5,
        )
        try:
            failed_key = base + b"failed"
            wait_for(
                lambda: (
                    raw.zcard(failed_key) == len(RAW_JOBS)
                    and queue.get_job_state("deep-progress") == "completed"
                    and all(queue.get_job_state(job.id) == "completed" for job in good)
                ),
                timeout=30,
                message=f"{raw.zrange(failed_key, 0, -1)}, {queue.get_job_counts()}",
            )
            assert worker.is_running()
        finally:
            worker.close(timeout=10)
        assert [queue.get_job(job.id).returnvalue for job in good] == list(range(6))
        assert queue.get_job_state("deep-progress") == "completed"
        assert raw.llen(base + b"active") == 0
        for job_id, (_, named) in RAW_JOBS.items():
            reason = raw.hget(base + job_id, b"failedReason").decode()
            assert named in reason, (job_id, reason)
            assert raw.hget(base + job_id, b"atm") == b"1", job_id  # ran (and failed) once
    finally:
        raw.close()


# foreign keep-jobs options a Python producer would refuse
JUNK_KEEP_JOBS = {
    "keep-count-list": {"removeOnComplete": {"count": [1]}},
    "keep-age-text": {"removeOnComplete": {"age": "soon", "limit": {"a": 1}}},
    "keep-count-huge": {"removeOnComplete": {"count": 1e400}},
    "keep-fail-list": {"removeOnFail": {"count": [1]}, "attempts": 1},
    # not keep-jobs, but read at the same moment: the retry delay cannot be computed
    "backoff-junk": {"attempts": 3, "backoff": {"type": "exponential", "delay": [1]}},
}


def test_junk_keep_jobs_options_do_not_stop_recording(foreign_queue, redis_url, prefix):
    """removeOnComplete/removeOnFail values no producer of ours writes are read as
    "keep the job": it is recorded once, with its outcome, and not run again."""
    queue = foreign_queue
    for job_id, opts in JUNK_KEEP_JOBS.items():
        push_by_hand(
            queue,
            job_id,
            {"name": "x", "data": "{}", "opts": json.dumps(opts), "timestamp": "1"},
        )

    def process(job):
        if job.id in ("keep-fail-list", "backoff-junk"):
            raise ValueError("meant to fail")
        return job.id

    worker = Worker(
        "foreign",
        process,
        connection=redis_url,
        prefix=prefix,
        lock_duration=1000,
        stalled_interval=300,
        drain_delay=0.5,
    )
    try:
        wait_for(
            lambda: set(queue.get_job_ids(["completed", "failed"])) == set(JUNK_KEEP_JOBS),
            timeout=20,
            message="the jobs with junk keep-jobs options were not all recorded",
        )
    finally:
        worker.close(timeout=10)
    for job_id in JUNK_KEEP_JOBS:
        job = queue.get_job(job_id)
        assert job.attempts_started == 1, (job_id, job.attempts_started, job.failed_reason)
        if job_id == "keep-fail-list":
            assert queue.get_job_state(job_id) == "failed"
            assert job.failed_reason == "meant to fail"
        elif job_id == "backoff-junk":
            assert queue.get_job_state(job_id) == "failed"
            assert "meant to fail" in job.failed_reason
            assert "TypeError" in job.failed_reason, job.failed_reason
        else:
            assert queue.get_job_state(job_id) == "completed", (job_id, job.failed_reason)
            assert job.returnvalue == job_id


# --- property: whatever bytes a foreign producer wrote, a worker can record an outcome --

_KNOWN_FIELDS = ["name", "data", "opts", "timestamp", "atm", "ats", "stacktrace", "parentKey"]
_JSON_BITS = [b"[", b"]", b"{", b"}", b'"a":', b"1", b",", b'"\xff"', b"null", b"\xc3"]


@st.composite
def _raw_values(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["bytes", "json-ish", "deep"]))
    if kind == "bytes":
        return draw(st.binary(max_size=40))
    if kind == "deep":
        depth = draw(st.integers(0, 3_000))
        return b'{"a":' * depth + b"1" + b"}" * depth
    return b"".join(draw(st.lists(st.sampled_from(_JSON_BITS), max_size=30)))


@st.composite
def _raw_jobs(draw: st.DrawFn) -> tuple[bytes, dict[bytes, bytes]]:
    names = draw(
        st.lists(st.sampled_from(_KNOWN_FIELDS) | st.text(max_size=5), max_size=8, unique=True)
    )
    fields = {name.encode(): draw(_raw_values()) for name in names}
    if draw(st.booleans()):
        fields[b"opts"] = json.dumps(
            {
                "attempts": draw(st.integers(-2, 5) | st.text(max_size=3)),
                "backoff": draw(
                    st.none()
                    | st.integers(-5, 5)
                    | st.dictionaries(
                        st.text(max_size=6),
                        st.integers() | st.lists(st.integers(), max_size=2),
                        max_size=3,
                    )
                ),
                "removeOnComplete": draw(
                    st.none()
                    | st.booleans()
                    | st.floats()
                    | st.dictionaries(
                        st.sampled_from(["count", "age", "limit"]),
                        st.floats() | st.text(max_size=2) | st.lists(st.integers(), max_size=2),
                        max_size=3,
                    )
                ),
                "stackTraceLimit": draw(st.integers(-3, 3) | st.floats()),
            }
        ).encode()
    return draw(st.binary(min_size=1, max_size=12)), fields


@settings(max_examples=150, deadline=None, database=None)
@given(raw=_raw_jobs(), outcome=st.sampled_from(["completed", "failed"]))
def test_any_foreign_hash_decodes_and_gets_an_outcome_call(raw, outcome):
    """What Redis hands the worker (decoded with surrogateescape, as every flowjobs
    client does) always becomes a Job, and the worker can always build the script call
    that records its outcome, or, failing that, the call that fails it with a reason;
    and that call can be sent."""
    from flowjobs.engine import scripts
    from flowjobs.engine.connection import ENCODING_ERRORS

    raw_id, fields = raw
    worker = Worker("fuzz", lambda job: None, connection="redis://127.0.0.1:1/0", autorun=False)
    decoded = {
        name.decode("utf-8", ENCODING_ERRORS): value.decode("utf-8", ENCODING_ERRORS)
        for name, value in fields.items()
    }
    job = Job(worker.queue, raw_id.decode("utf-8", ENCODING_ERRORS), decoded)
    job.token = "token"
    problem = job.decode_problem()
    if problem is not None:
        value: object = UnrecoverableError(problem)
        outcome = "failed"
    else:
        value = ValueError("boom") if outcome == "failed" else {"ok": True}
    try:
        call = worker._outcome_call(job, outcome, value)
    except Exception as error:  # the worker's safety net takes over
        call = worker._unrecordable_call(job, outcome, value, error)
    assert call is not None
    assert scripts.pack_call(*call[0])
