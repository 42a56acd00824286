"""A projector that lost its lease cannot commit (issue 14, finding 5).

The lease's fence token grows with every take; each projector transaction checks it
first. The chaos test runs two real ``manage.py syncjobs`` processes and SIGSTOPs
whichever holds the lease past its TTL, again and again, under load.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from django.db import DEFAULT_DB_ALIAS, connection, connections, transaction

from flowjobs.lease import FencedLease, LeaseLost, check_fence, highest_fence
from flowjobs.models import JobRecord, LeaseFence, StreamPosition
from tests.django.conftest import WorkerProcess, database_url
from tests.helpers import wait_for, work_for

REPO = Path(__file__).resolve().parents[2]
# The run: TTL 3 s, paused 4.5-6 s, 7 times at random. The same shape,
# shorter, each pause aimed at the window that matters (a batch read, not committed)
# and lasting until the other projector has committed.
LEASE_TTL_MS = 1000
PAUSES = 3


@pytest.mark.django_db(transaction=True)
def test_a_fenced_out_holder_cannot_commit(rclient, prefix):
    key = f"{prefix}:flowjobs:mirror-lock"
    old = FencedLease(rclient, key, ttl_ms=5000)
    assert old.acquire(floor=highest_fence(key))
    with transaction.atomic():
        check_fence(key, old.fence)
    rclient.delete(key)  # the old holder's lease expired while it was paused
    new = FencedLease(rclient, key, ttl_ms=5000)
    assert new.acquire(floor=highest_fence(key))
    assert new.fence > old.fence
    with transaction.atomic():
        check_fence(key, new.fence)

    with pytest.raises(LeaseLost), transaction.atomic():
        StreamPosition.objects.create(prefix=prefix, queue="written-by-the-old-holder")
        check_fence(key, old.fence)  # the old holder wakes up and tries to commit
    assert not StreamPosition.objects.filter(queue="written-by-the-old-holder").exists()
    assert LeaseFence.objects.get(name=key).fence == new.fence


@pytest.mark.django_db(transaction=True)
def test_a_redis_that_forgot_the_fence_counter_still_hands_out_a_newer_fence(rclient, prefix):
    key = f"{prefix}:flowjobs:mirror-lock"
    first = FencedLease(rclient, key, ttl_ms=5000)
    first.acquire()
    with transaction.atomic():
        check_fence(key, first.fence + 41)  # the database saw a high fence before
    rclient.delete(key, f"{key}:fence")  # Redis restarted without its data
    second = FencedLease(rclient, key, ttl_ms=5000)
    assert second.acquire(floor=highest_fence(key))
    assert second.fence == first.fence + 42
    with transaction.atomic():
        check_fence(key, second.fence)


def _syncjobs(env: dict[str, str], name: str) -> WorkerProcess:
    """``manage.py syncjobs`` whose Redis connections carry ``name`` (CLIENT LIST)."""
    url = f"{env['FLOWJOBS_REDIS_URL']}?client_name={name}"
    process = WorkerProcess([], {**env, "FLOWJOBS_REDIS_URL": url}, command="syncjobs")
    process.name = name
    return process


def _holder_pid(rclient, key: str) -> int | None:
    token = rclient.get(key)
    return int(token.split(":")[1]) if token else None


def _position(prefix: str) -> str | None:
    return (
        StreamPosition.objects.filter(prefix=prefix, queue="q")
        .values_list("last_id", flat=True)
        .first()
    )


def _has_read_a_batch(rclient, name: str) -> bool:
    """Whether the projector's last Redis command read job hashes (a pipeline of
    HGETALLs): it holds a batch it has not committed yet (the next step starts with
    XINFO/XREAD)."""
    return any(
        client.get("name") == name and client.get("cmd") == "hgetall"
        for client in rclient.client_list()
    )


def _stop_the_holder_in_its_window(rclient, key: str, by_pid: dict) -> WorkerProcess:
    """SIGSTOPs the lease holder between reading a batch and committing it: the window in
    which a projector without fencing commits what it read after losing the lease. The
    table lock holds it there. When the holder's lease ran out before it read a batch
    (a slow step on a loaded machine: the TTL is 1 s), every projector waits on the lock
    for the database's fence instead and none reads: the lock is let go and the next
    holder tried."""
    for _attempt in range(10):
        wait_for(lambda: _holder_pid(rclient, key) in by_pid, timeout=30, message="a holder")
        holder = by_pid[_holder_pid(rclient, key)]
        with _mirror_table_locked():
            try:
                wait_for(lambda h=holder: _has_read_a_batch(rclient, h.name), timeout=5)
            except AssertionError:
                continue
            holder.proc.send_signal(signal.SIGSTOP)
            return holder
    raise AssertionError("no lease holder read a batch while the mirror's table was locked")


@contextmanager
def _mirror_table_locked() -> Iterator[None]:
    """Another database connection holds a lock that stops every reader and writer
    of the mirror's job table until the block ends."""
    info = connection.settings_dict
    if connection.vendor == "sqlite":
        other = sqlite3.connect(info["NAME"], isolation_level=None)
        other.execute("BEGIN EXCLUSIVE")
        try:
            yield
        finally:
            other.execute("ROLLBACK")
            other.close()
        return
    other = connections.create_connection(DEFAULT_DB_ALIAS)
    try:
        with other.cursor() as cursor:
            other.set_autocommit(False)
            table = other.ops.quote_name(JobRecord._meta.db_table)
            cursor.execute(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")
            yield
    finally:
        other.rollback()
        other.close()


@pytest.mark.chaos
@pytest.mark.django_db(transaction=True)
def test_projectors_paused_past_their_lease_leave_the_mirror_equal_to_redis(
    make_queue, make_worker, rclient, redis_url, prefix, record_property
):
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.settings",
        "DATABASE_URL": database_url(),
        "FLOWJOBS_REDIS_URL": redis_url,
        "FLOWJOBS_PREFIX": prefix,
        "FLOWJOBS_MIRROR_LOCK_TTL_MS": str(LEASE_TTL_MS),
        "FLOWJOBS_MIRROR_BLOCK_MS": "200",
        "FLOWJOBS_MIRROR_BATCH_SIZE": "200",
        "FLOWJOBS_MIRROR_DISCOVER_INTERVAL": "0.2",
        "PYTHONPATH": str(REPO),
        "PYTHONUNBUFFERED": "1",
    }
    key = f"{prefix}:flowjobs:mirror-lock"
    queue = make_queue("q")
    # No trimming: a trimmed stream makes the projector reconcile, which would hide stale rows.
    rclient.hset(f"{prefix}:q:meta", "opts.maxLenEvents", "1000000")
    queue.add("warm-up", {})  # the events stream exists before the projectors start
    projectors = [_syncjobs(env, "mirror-a"), _syncjobs(env, "mirror-b")]
    by_pid = {p.proc.pid: p for p in projectors}
    stop_load = threading.Event()

    def load() -> None:
        while not stop_load.is_set():
            queue.add_bulk([{"name": "n", "data": {}} for _ in range(20)])
            stop_load.wait(0.05)

    producer = threading.Thread(target=load, daemon=True)
    make_worker("q", lambda job: work_for(0.005), concurrency=20)
    pauses = takeovers = 0
    try:
        wait_for(lambda: _holder_pid(rclient, key) in by_pid, timeout=30, message="a holder")
        producer.start()
        for _round in range(PAUSES):
            holder = _stop_the_holder_in_its_window(rclient, key, by_pid)
            pauses += 1
            # Stopped past its TTL: the other projector takes over and commits newer
            # states (its position moves) before the stopped one wakes up.
            stopped_at = _position(prefix)
            wait_for(
                lambda h=holder, at=stopped_at: (
                    _holder_pid(rclient, key) not in (None, h.proc.pid) and _position(prefix) != at
                ),
                timeout=30,
                message="the other projector took over and committed",
            )
            takeovers += 1
            holder.proc.send_signal(signal.SIGCONT)
        stop_load.set()
        producer.join(10)

        wait_for(
            lambda: not any(queue.get_job_counts("wait", "active").values()),
            timeout=60,
            message="Redis has every job completed",
        )
        tail = rclient.xinfo_stream(f"{prefix}:q:events")["last-generated-id"]
        wait_for(
            lambda: StreamPosition.objects.filter(prefix=prefix, queue="q", last_id=tail).exists(),
            timeout=60,
            message="the mirror caught up",
        )
        completed = set(rclient.zrange(f"{prefix}:q:completed", 0, -1))
        rows = dict(
            JobRecord.objects.filter(prefix=prefix, queue="q").values_list("job_id", "state")
        )
        wrong = {job_id: state for job_id, state in rows.items() if state != "completed"}
        record_property("mirror_pauses", pauses)
        record_property("mirror_takeovers", takeovers)
        record_property("mirror_jobs", len(completed))
        record_property("mirror_rows_not_equal_to_redis", len(wrong))
        assert set(rows) == completed
        assert wrong == {}, f"{len(wrong)} rows differ from Redis, e.g. {list(wrong.items())[:5]}"
        assert takeovers == PAUSES
        # The stale holder's transaction was refused: by the fence, or on SQLite possibly
        # first by the database's lock (its deferred transaction cannot take the write
        # lock the new holder has used: "database is locked"); both roll it back whole.
        refusals = ["lease lost"] if connection.vendor != "sqlite" else ["lease lost", "is locked"]
        outputs = [p.output() for p in projectors]
        assert any(r in out for r in refusals for out in outputs), [
            line
            for out in outputs
            for line in out.splitlines()
            if "mirror" in line or "Error" in line
        ]
    finally:
        stop_load.set()
        for projector in projectors:
            projector.signal(signal.SIGCONT)
            projector.stop()
