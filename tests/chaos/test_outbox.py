"""Outbox under real faults (issue 15): Redis flapping under hundreds of transactions,
the relay SIGKILLed mid-push, two relays. Closing figures: committed, jobs in Redis,
lost, duplicated (both must be 0)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest
import redis
from django.db import connection, connections, transaction

from flowjobs import conf, outbox
from flowjobs.enqueue import enqueue
from flowjobs.models import OutboxEntry
from tests.django.conftest import database_url
from tests.helpers import wait_for
from tests.redis_server import RedisServer
from tests.testapp.models import Note

pytestmark = [pytest.mark.chaos, pytest.mark.django_db(transaction=True)]

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def server(settings, prefix: str) -> Iterator[RedisServer]:  # noqa: ANN001
    """A redis-server with fsync-always AOF: a stop/start loses nothing it confirmed."""
    redis_server = RedisServer(["--appendonly", "yes", "--appendfsync", "always"])
    settings.FLOWJOBS = {
        "REDIS_URL": redis_server.url,
        "PREFIX": prefix,
        "MIRROR": False,
        "OUTBOX_PUSH_TIMEOUT": 0.3,
    }
    try:
        yield redis_server
    finally:
        conf.reset()
        redis_server.close()


def tally(client: redis.Redis, prefix: str, queue: str) -> tuple[list[str], int]:
    """(job ids of every "added" event in order, number of "duplicated" events)."""
    added, duplicated = [], 0
    for _id, fields in client.xrange(f"{prefix}:{queue}:events"):
        if fields.get("event") == "added":
            added.append(fields["jobId"])
        elif fields.get("event") == "duplicated":
            duplicated += 1
    return added, duplicated


def test_redis_flapping_over_hundreds_of_transactions(
    server: RedisServer, prefix: str, report: Callable[[str, object], None]
):
    transactions = 300
    done = threading.Event()
    flaps = {"refused": 0, "hung": 0}

    def flap() -> None:
        while not done.is_set():
            server.stop()
            flaps["refused"] += 1
            done.wait(0.15)
            server.start()
            done.wait(0.1)
            server.pause()
            flaps["hung"] += 1
            done.wait(0.15)
            server.unpause()
            done.wait(0.1)

    relay_stop = threading.Event()
    relay = outbox.Relay(poll_interval=0.05)
    relay_thread = threading.Thread(target=relay.run, args=(relay_stop,), daemon=True)
    flapper = threading.Thread(target=flap, daemon=True)
    relay_thread.start()
    flapper.start()
    committed = 0
    try:
        for index in range(transactions):
            with transaction.atomic():
                note = Note.objects.create(text=f"order {index}")
                enqueue("orders", "confirm", {"note": note.pk}, on_commit=True)
            committed += 1
    finally:
        done.set()
        flapper.join(10)
        server.ensure_running()
    wait_for(lambda: not OutboxEntry.objects.exists(), timeout=60, message="backlog left")
    relay_stop.set()
    relay_thread.join(10)

    client = server.client(decode_responses=True)
    added, duplicated = tally(client, prefix, "orders")
    notes = {json.loads(client.hget(f"{prefix}:orders:{i}", "data"))["note"] for i in added}
    committed_notes = set(Note.objects.values_list("pk", flat=True))
    lost = len(committed_notes - notes)
    report("transactions committed", committed)
    report("jobs in Redis", len(set(added)))
    report("lost", lost)
    report("duplicated", len(added) - len(set(added)) + duplicated)
    report("pushed by the relay", relay.pushed)
    report("Redis refused / hung phases", f"{flaps['refused']} / {flaps['hung']}")
    assert committed == transactions == len(committed_notes)
    assert lost == 0
    assert len(added) == len(set(added)) == transactions and duplicated == 0
    assert flaps["refused"] >= 2, "Redis did not flap during the run"


def _backlog(prefix: str, count: int, batches: int, tag: str = "a") -> None:
    """``count`` entries as failed pushes leave them: committed rows, nothing in Redis."""
    queue = conf.get_queue("orders")
    for batch in range(batches):
        with transaction.atomic():
            batch_key = uuid.uuid4()
            OutboxEntry.objects.bulk_create(
                OutboxEntry(
                    batch=batch_key,
                    prefix=prefix,
                    kind="jobs",
                    jobs=[asdict(queue.encode("confirm", {"i": i}, job_id=f"{tag}{batch}-{i}"))],
                )
                for i in range(count // batches)
            )


def _relay_process(
    server: RedisServer, prefix: str, *args: str, output: Any = subprocess.PIPE
) -> subprocess.Popen:
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.settings",
        "DATABASE_URL": database_url(),
        "FLOWJOBS_REDIS_URL": server.url,
        "FLOWJOBS_PREFIX": prefix,
        "FLOWJOBS_MIRROR": "false",
        "PYTHONPATH": str(REPO),
    }
    return subprocess.Popen(
        [sys.executable, str(REPO / "manage.py"), "relayoutbox", *args],
        cwd=REPO,
        env=env,
        stdout=output,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_relay_sigkilled_mid_push(
    server: RedisServer, prefix: str, report: Callable[[str, object], None]
):
    total = 1500
    _backlog(prefix, total, batches=5)
    connections.close_all()
    client = server.client(decode_responses=True)
    relay = _relay_process(server, prefix)
    try:
        # past the first committed batch of 100, into the middle of a later one
        wait_for(
            lambda: len(tally(client, prefix, "orders")[0]) >= 250, timeout=30, message="no push"
        )
        relay.send_signal(signal.SIGKILL)
        relay.wait(10)
    finally:
        if relay.poll() is None:
            relay.kill()
    in_redis = len(tally(client, prefix, "orders")[0])
    left = OutboxEntry.objects.count()
    # entries pushed whose deletion the kill rolled back: pushed again, adding nothing
    overlap = in_redis + left - total
    assert in_redis > 0 and left > 0, f"the kill did not land mid-run ({left} left)"
    finisher = _relay_process(server, prefix, "--once")
    output = finisher.communicate(timeout=60)[0]
    assert finisher.returncode == 0, output
    added, duplicated = tally(client, prefix, "orders")
    report("entries", total)
    report("pushed before the kill", in_redis)
    report("pushed but not deleted at the kill (re-pushed, added nothing)", overlap)
    report("jobs in Redis", len(set(added)))
    report("duplicated", len(added) - len(set(added)) + duplicated)
    assert overlap >= 0
    assert len(added) == len(set(added)) == total and duplicated == 0
    assert OutboxEntry.objects.count() == 0


def test_two_relays_one_pushes_and_the_other_takes_over(
    server: RedisServer, prefix: str, report: Callable[[str, object], None]
):
    _backlog(prefix, 400, batches=4)
    connections.close_all()
    client = server.client(decode_responses=True)
    relays = [_relay_process(server, prefix) for _ in range(2)]
    lock_key = outbox.relay_lock_key(prefix)
    try:
        wait_for(lambda: not OutboxEntry.objects.exists(), timeout=30, message="backlog left")
        holder = int(client.get(lock_key).split(":")[1])
        active = next(p for p in relays if p.pid == holder)
        standby = next(p for p in relays if p.pid != holder)
        active.send_signal(signal.SIGKILL)
        active.wait(10)
        _backlog(
            prefix, 100, batches=1, tag="late"
        )  # while nobody holds the lock (until its TTL ends)
        connections.close_all()
        wait_for(
            lambda: not OutboxEntry.objects.exists(),
            timeout=30,
            message="the standby relay did not take over",
        )
        assert int(client.get(lock_key).split(":")[1]) == standby.pid
        standby.send_signal(signal.SIGTERM)
        output = standby.communicate(timeout=30)[0]
    finally:
        for process in relays:
            if process.poll() is None:
                process.kill()
                process.wait()
    added, duplicated = tally(client, prefix, "orders")
    report("jobs in Redis", len(set(added)))
    report("duplicated", len(added) - len(set(added)) + duplicated)
    # the standby pushed nothing while the other held the lock: exactly the second backlog
    assert "after pushing 100 entr(ies)" in output, output
    assert len(added) == len(set(added)) == 500 and duplicated == 0


def test_a_stale_relay_resumed_after_takeover_adds_nothing_twice(
    server: RedisServer, prefix: str, report: Callable[[str, object], None]
):
    """Relay A freezes (SIGSTOP) mid-push; its lock expires, relay B takes over; every
    job runs and is removed; A wakes up and goes on pushing what it had read. On
    PostgreSQL A's database session is also killed while it is frozen (as
    idle_in_transaction_session_timeout or a failover would), so B pushes and deletes
    A's rows too, and A's late pushes meet B's receipts. No job may be added twice."""
    total = 1000
    _backlog(prefix, total, batches=4)
    connections.close_all()
    client = server.client(decode_responses=True)
    stale_log = tempfile.NamedTemporaryFile("w+", suffix=".log")  # noqa: SIM115
    stale = _relay_process(server, prefix, output=stale_log)
    takeover = None
    try:
        wait_for(lambda: len(tally(client, prefix, "orders")[0]) >= 30, timeout=30)
        stale.send_signal(signal.SIGSTOP)
        frozen_at = len(tally(client, prefix, "orders")[0])
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE "
                    "datname = current_database() AND pid <> pg_backend_pid() "
                    "AND state = 'idle in transaction'"
                )
                assert len(cursor.fetchall()) == 1  # A's session, holding its rows
        takeover = _relay_process(server, prefix)
        lock_key = outbox.relay_lock_key(prefix)
        wait_for(
            lambda: int((client.get(lock_key) or "h:0").split(":")[1]) == takeover.pid,
            timeout=30,
            message="relay B did not take the lock over",
        )
        if connection.vendor != "sqlite":  # SQLite: A's open read blocks B's writes
            wait_for(lambda: not OutboxEntry.objects.exists(), timeout=30, message="B stuck")
        for job_id in set(tally(client, prefix, "orders")[0]):  # ran, removeOnComplete
            client.delete(f"{prefix}:orders:{job_id}")
        stale.send_signal(signal.SIGCONT)
        wait_for(lambda: not OutboxEntry.objects.exists(), timeout=30, message="backlog left")
        if connection.vendor == "postgresql":  # A pushed its copies, then failed to delete
            wait_for(
                lambda: "relay step failed" in Path(stale_log.name).read_text(),
                timeout=30,
                message="relay A did not resume its stale pass",
            )
    finally:
        for process in (stale, takeover):
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGCONT)
                process.kill()
                process.wait()
        stale_log.close()
    added, duplicated = tally(client, prefix, "orders")
    report("pushed before A froze", frozen_at)
    report("jobs added", len(set(added)))
    report("duplicated", len(added) - len(set(added)) + duplicated)
    assert len(added) == len(set(added)) == total and duplicated == 0
