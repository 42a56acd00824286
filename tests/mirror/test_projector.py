"""The events-stream projector: catching up, restarts, trimming, flows, foreign data."""

from __future__ import annotations

import dataclasses
import json
import threading
import time

import pytest
from django.db import DatabaseError

from flowjobs import mirror
from flowjobs.engine import Flow, Worker
from flowjobs.mirror import _compare_ids, reconcile
from flowjobs.mirror import projector as projector_module
from flowjobs.models import JobRecord, StreamPosition
from tests.helpers import query_log_left_by, wait_for

pytestmark = pytest.mark.django_db


def _rows(queue: str = "q") -> dict[str, JobRecord]:
    return {row.job_id: row for row in JobRecord.objects.filter(queue=queue)}


def test_new_jobs_are_mirrored_with_their_fields(make_queue, make_projector):
    queue = make_queue("q")
    job = queue.add("render", {"id": 7, "text": "é"}, attempts=3, priority=5)
    delayed = queue.add("later", {}, delay=60_000)

    make_projector().catch_up()

    rows = _rows()
    row = rows[job.id]
    assert (row.name, row.state, row.data) == ("render", "prioritized", {"id": 7, "text": "é"})
    assert row.opts["attempts"] == 3
    assert row.priority == 5
    assert row.created_at is not None and row.in_redis
    assert row.root_key == row.key == f"{queue.prefix}:q:{job.id}"
    assert rows[delayed.id].state == "delayed"


def test_projector_catches_up_after_being_stopped_while_1000_jobs_finished(
    make_queue, make_worker, make_projector, rclient, prefix
):
    queue = make_queue("q")
    queue.add_bulk([{"name": "n", "data": {"i": i}} for i in range(1000)])
    first = make_projector()
    first.catch_up()
    assert JobRecord.objects.filter(queue="q", state="waiting").count() == 1000
    stopped_at = StreamPosition.objects.get(prefix=prefix, queue="q").last_id
    del first  # the projector is stopped: nothing reads the stream now

    worker = make_worker("q", lambda job: job.data["i"] * 2, concurrency=20)
    wait_for(lambda: queue.get_job_counts("completed")["completed"] == 1000, timeout=60)
    worker.close()

    second = make_projector()
    assert second.streams[f"{prefix}:q:events"].last_id == stopped_at
    second.catch_up()

    completed = JobRecord.objects.filter(queue="q", state="completed")
    assert completed.count() == 1000
    values = dict(completed.values_list("data__i", "returnvalue"))
    assert all(values[i] == i * 2 for i in range(1000))
    assert completed.filter(finished_at__isnull=True).count() == 0
    # It resumed from the stored position instead of replaying the stream.
    after = rclient.xrange(f"{prefix}:q:events", f"({stopped_at}", "+")
    assert second.events_applied == len(after)


def test_position_persists_across_a_projector_restart(make_queue, make_projector, rclient, prefix):
    queue = make_queue("q")
    for i in range(3):
        queue.add("a", {"i": i})
    make_projector().catch_up()
    position = StreamPosition.objects.get(prefix=prefix, queue="q")
    last = rclient.xrevrange(f"{prefix}:q:events", count=1)[0][0]
    assert position.last_id == last
    assert position.entries_read == rclient.xlen(f"{prefix}:q:events")

    for i in range(5):
        queue.add("b", {"i": i})
    restarted = make_projector()
    restarted.catch_up()
    assert restarted.events_applied == 10  # 5 x (added + waiting), nothing replayed
    assert JobRecord.objects.filter(queue="q").count() == 8
    assert restarted.reconciles == 0


def test_stream_trimmed_past_the_position_falls_back_to_reconcile(
    make_queue, make_projector, rclient, prefix
):
    queue = make_queue("q")
    for i in range(10):
        queue.add("early", {"i": i})
    make_projector().catch_up()

    for i in range(50):
        queue.add("late", {"i": i})
    gone = queue.get_job(queue.get_job_ids("waiting", 0, -1, asc=True)[0])
    rclient.delete(gone.key)  # deleted without an event: only a reconcile can notice
    rclient.xtrim(f"{prefix}:q:events", maxlen=5, approximate=False)

    projector = make_projector()
    projector.catch_up()

    assert projector.reconciles == 1
    rows = JobRecord.objects.filter(queue="q")
    assert rows.filter(in_redis=True).count() == 59
    assert rows.filter(name="late").count() == 50
    assert rows.get(job_id=gone.id).in_redis is False
    position = StreamPosition.objects.get(prefix=prefix, queue="q")
    tail = rclient.xrevrange(f"{prefix}:q:events", count=1)[0][0]
    assert _compare_ids(position.last_id, tail) == 0


def test_stream_not_trimmed_does_not_reconcile(make_queue, make_projector):
    queue = make_queue("q")
    queue.add("a", {})
    projector = make_projector()
    projector.catch_up()
    queue.add("b", {})
    projector.catch_up()
    assert projector.reconciles == 0


def test_a_burst_while_a_long_batch_is_applied_is_read_ahead_not_reconciled(
    make_queue, make_projector, rclient, prefix, monkeypatch
):
    """Workers trim the events stream while the projector applies a batch (a burst): it
    reads on between chunks, so nothing it has yet to apply is trimmed away (issue 17)."""
    queue = make_queue("q")
    queue.add_bulk([{"name": "first", "data": {"i": i}} for i in range(30)])
    projector = make_projector()
    monkeypatch.setattr(projector_module, "APPLY_CHUNK", 10, raising=False)
    read_hashes = projector_module.read_hashes
    bursts: list[int] = []

    def read_hashes_during_a_burst(client, observations):  # noqa: ANN001
        read_hashes(client, observations)
        # the time 10 jobs take to apply: 5 more jobs added, and the workers' trim
        # keeps only their 10 events
        for _ in range(len(observations) // 10):
            if len(bursts) == 4:
                return
            queue.add_bulk([{"name": "burst", "data": {"i": len(bursts)}} for _ in range(5)])
            rclient.xtrim(f"{prefix}:q:events", maxlen=10, approximate=False)
            bursts.append(5)

    monkeypatch.setattr(projector_module, "read_hashes", read_hashes_during_a_burst)
    projector.catch_up()

    assert projector.reconciles == 0
    assert len(bursts) == 4
    rows = JobRecord.objects.filter(queue="q")
    assert rows.filter(name="first").count() == 30
    assert rows.filter(name="burst").count() == 20
    position = StreamPosition.objects.get(prefix=prefix, queue="q")
    tail = rclient.xrevrange(f"{prefix}:q:events", count=1)[0][0]
    assert _compare_ids(position.last_id, tail) == 0


def test_a_projector_that_read_to_the_end_is_caught_up_with_events_read_ahead(
    make_queue, make_projector, monkeypatch
):
    """runworker lowers the mirror's thread to idle priority once it is caught up (read
    every stream to its end). Under a steady flow of jobs every batch is long and reads
    ahead: that still counts, or the mirror would never yield the CPU to the workers."""
    queue = make_queue("q")
    queue.add_bulk([{"name": "first", "data": {"i": i}} for i in range(30)])
    projector = make_projector()
    monkeypatch.setattr(projector_module, "APPLY_CHUNK", 10)
    read_hashes = projector_module.read_hashes

    def read_hashes_while_jobs_arrive(client, observations):  # noqa: ANN001
        read_hashes(client, observations)
        queue.add("more", {})

    monkeypatch.setattr(projector_module, "read_hashes", read_hashes_while_jobs_arrive)
    assert projector.step(block_ms=0) == 60
    assert projector.caught_up
    assert JobRecord.objects.filter(queue="q", name="first").count() == 30


def test_events_gather_until_a_burst_brings_half_a_batch(make_queue, make_projector):
    """run() lets events trickle together between batches; a burst ends that wait
    early, before the workers' trim could pass the projector."""
    queue = make_queue("q")
    queue.add("a", {})
    projector = make_projector(batch_size=20)
    projector.catch_up()
    never = threading.Event()

    queue.add("b", {})  # 2 events: a trickle, gathered for the whole wait
    started = time.monotonic()
    projector.gather(never, 0.3)
    assert time.monotonic() - started >= 0.3

    projector.catch_up()
    queue.add_bulk([{"name": "burst", "data": {}} for _ in range(5)])  # 10 events: half
    started = time.monotonic()
    projector.gather(never, 30)
    assert time.monotonic() - started < 20  # ended by the burst, not the 30 s wait


def _held_off_projector(make_queue, make_projector):  # noqa: ANN001, ANN202
    """Queue "q" with one job, and a projector caught up with it that holds off a queue
    trimmed past (as run() does)."""
    queue = make_queue("q")
    queue.add("first", {})
    projector = make_projector()
    projector.hold_off = True
    projector.catch_up()
    return queue, projector


def test_a_trimmed_past_queue_is_held_off_while_its_burst_goes_on(
    make_queue, make_projector, rclient, prefix, monkeypatch
):
    """A reconcile in the middle of a burst reads job hashes in Redis time the workers
    need, and the burst trims past it again: while the queue's events keep coming fast,
    the hold is renewed (doubling), and the queue is reconciled once they slow down."""
    monkeypatch.setattr(projector_module, "BUSY_EVENTS_PER_S", 20, raising=False)  # 10 jobs, 0.5 s
    queue, projector = _held_off_projector(make_queue, make_projector)

    def hold_ended() -> None:
        wait_for(lambda: projector.held_for() == 0, timeout=10)

    queue.add_bulk([{"name": "burst", "data": {}} for _ in range(3)])
    rclient.xtrim(f"{prefix}:q:events", maxlen=1, approximate=False)
    projector.step(block_ms=0)
    assert 0 < projector.held_for() <= 0.5

    queue.add_bulk([{"name": "burst", "data": {}} for _ in range(10)])  # 20 events
    hold_ended()
    projector.step(block_ms=0)
    assert projector.reconciles == 0
    assert 0.5 < projector.held_for() <= 1.0  # still busy: held again, doubled

    hold_ended()  # nothing came during this hold
    projector.step(block_ms=0)
    assert projector.reconciles == 1
    assert JobRecord.objects.filter(queue="q", name="burst").count() == 13


@pytest.fixture
def deferring(make_queue, make_projector, monkeypatch):
    """(queue "q" with one job, a projector caught up with it that defers bursts as
    run() does); any pace of events is a burst (BUSY_EVENTS_PER_S 1), held a minute."""
    monkeypatch.setattr(projector_module, "BUSY_EVENTS_PER_S", 1, raising=False)
    queue = make_queue("q")
    queue.add("first", {})
    projector = make_projector(burst_lag_s=60.0)
    projector.catch_up()
    projector.defer_bursts = True
    return queue, projector


def test_a_burst_is_read_on_and_applied_once_it_slows_down(deferring):
    """While events pour in (workers draining a backlog), run() only reads them, the
    cheap part, and applies them once the burst slows down or has been held a while:
    applying takes CPU and Redis time the workers want during the burst."""
    queue, projector = deferring

    def mirrored() -> int:
        return JobRecord.objects.filter(queue="q", name__in=("burst", "more")).count()

    queue.add_bulk([{"name": "burst", "data": {}} for _ in range(5)])
    assert projector.step(block_ms=0) == 0
    assert projector.deferring and mirrored() == 0
    assert projector.unapplied_events == 10
    queue.add_bulk([{"name": "burst", "data": {}} for _ in range(5)])
    assert projector.step(block_ms=0) == 0
    assert projector.deferring and mirrored() == 0

    assert projector.step(block_ms=0) == 20  # nothing new: the burst is over
    assert not projector.deferring and mirrored() == 10
    assert projector.unapplied_events == 0

    # held no longer than MIRROR_BURST_LAG_S, however fast the events come
    projector.config = dataclasses.replace(projector.config, burst_lag_s=0.3)
    queue.add_bulk([{"name": "more", "data": {}} for _ in range(5)])
    assert projector.step(block_ms=0) == 0 and projector.deferring
    began = time.monotonic()

    def applied_while_the_burst_goes_on() -> bool:
        queue.add("more", {})
        return projector.step(block_ms=0) > 0

    wait_for(applied_while_the_burst_goes_on, timeout=10, message="a burst held past its lag")
    assert time.monotonic() - began >= 0.3
    assert mirrored() > 15


def test_with_mirror_burst_lag_s_0_a_burst_is_applied_as_it_is_read(deferring):
    """MIRROR_BURST_LAG_S 0: the rows follow a burst batch by batch (the admin shows its
    jobs at once), the workers paying for the applying during the burst."""
    queue, projector = deferring
    projector.config = dataclasses.replace(projector.config, burst_lag_s=0.0)
    queue.add_bulk([{"name": "burst", "data": {}} for _ in range(5)])
    assert projector.step(block_ms=0) == 10
    assert not projector.deferring
    assert JobRecord.objects.filter(queue="q", name="burst").count() == 5


def test_the_burst_lag_setting_is_read_and_checked(settings, flowjobs_settings):
    assert mirror.mirror_settings().burst_lag_s == 5.0
    settings.FLOWJOBS = {**flowjobs_settings, "MIRROR_BURST_LAG_S": 0}
    assert mirror.mirror_settings().burst_lag_s == 0.0
    assert mirror.check_settings() == []
    for wrong in (-1, 5000, "nan"):
        settings.FLOWJOBS = {**flowjobs_settings, "MIRROR_BURST_LAG_S": wrong}
        assert mirror.check_settings() == [
            "FLOWJOBS MIRROR_BURST_LAG_S must be between 0 and 60"
        ], wrong
    settings.FLOWJOBS = {**flowjobs_settings, "MIRROR_BURST_LAG_S": "soon"}
    assert mirror.check_settings()[0].startswith("FLOWJOBS MIRROR_* settings are not valid")


def test_a_burst_is_left_unread_while_its_stream_keeps_it(deferring):
    """While a burst is deferred, the projector only looks at the streams' lengths. It
    reads them when a stream's unread events, with twice what came since the last look,
    would reach half of what the stream keeps (meta `opts.maxLenEvents`), and reads and
    applies them when the burst ends: read after the burst, they cost the workers
    nothing during it."""
    queue, projector = deferring
    queue.set_events_max_length(200)  # read at 100 unread

    def burst(jobs: int) -> None:  # two events a job: added, waiting
        queue.add_bulk([{"name": "burst", "data": {}} for _ in range(jobs)])

    burst(5)
    assert projector.step(block_ms=0) == 0
    assert projector.deferring and projector.unapplied_events == 10
    burst(10)  # 20 unread, 20 new: 60
    assert projector.step(block_ms=0) == 0
    assert projector.deferring and projector.unapplied_events == 10  # left unread
    burst(10)  # 40 unread, 20 new: 80
    assert projector.step(block_ms=0) == 0
    assert projector.unapplied_events == 10
    burst(10)  # 60 unread, 20 new: 100, half the cap
    assert projector.step(block_ms=0) == 0
    assert projector.deferring and projector.unapplied_events == 70
    assert JobRecord.objects.filter(name="burst").count() == 0

    assert projector.step(block_ms=0) == 70  # nothing new: the burst is over
    assert not projector.deferring
    assert JobRecord.objects.filter(name="burst").count() == 35


def test_events_while_a_queue_has_a_backlog_are_a_burst_however_slowly_they_come(
    deferring, monkeypatch
):
    """Workers draining a backlog on a slow machine send fewer events a second than
    BUSY_EVENTS_PER_S, and want the CPU as much: BACKLOG_EVENTS_PER_S while some queue
    has BACKLOG_JOBS waiting is a burst too. Without the backlog, the same pace is
    applied as it is read."""
    queue, projector = deferring
    monkeypatch.setattr(projector_module, "BUSY_EVENTS_PER_S", 10**12, raising=False)
    monkeypatch.setattr(projector_module, "BACKLOG_EVENTS_PER_S", 1, raising=False)
    monkeypatch.setattr(projector_module, "BACKLOG_JOBS", 20, raising=False)

    queue.add_bulk([{"name": "early", "data": {}} for _ in range(10)])  # 11 waiting
    assert projector.step(block_ms=0) == 20
    assert not projector.deferring

    queue.add_bulk([{"name": "burst", "data": {}} for _ in range(10)])  # 21 waiting
    assert projector.step(block_ms=0) == 0
    assert projector.deferring and projector.unapplied_events == 20
    assert projector.step(block_ms=0) == 20  # nothing new: over
    assert JobRecord.objects.filter(name="burst").count() == 10


def test_a_backlog_s_burst_goes_on_while_its_last_jobs_are_drained(deferring, monkeypatch):
    """A burst a backlog began goes on while events keep coming at BACKLOG_EVENTS_PER_S,
    after fewer than BACKLOG_JOBS are left waiting: the backlog's last jobs are drained at
    the pace of the others, and applying the burst then (seen at concurrency 1: 28 µs
    of CPU a job in the services process) took the CPU from them. It ends when the
    events stop."""
    queue, projector = deferring
    monkeypatch.setattr(projector_module, "BUSY_EVENTS_PER_S", 10**12, raising=False)
    monkeypatch.setattr(projector_module, "BACKLOG_EVENTS_PER_S", 1, raising=False)
    monkeypatch.setattr(projector_module, "BACKLOG_JOBS", 20, raising=False)
    queue.add_bulk([{"name": "burst", "data": {}} for _ in range(21)])  # 22 waiting
    assert projector.step(block_ms=0) == 0 and projector.deferring

    taker = Worker("q", None, connection=queue.connection, prefix=queue.prefix)
    try:
        for n in range(12):  # 10 left waiting; each take writes an "active" event
            assert taker.get_next_job(f"token-{n}", block=False) is not None
            assert projector.step(block_ms=0) == 0, f"applied with {21 - n} waiting"
            assert projector.deferring
    finally:
        taker.close()
    assert projector.step(block_ms=0) == 2 * 21 + 12  # no more events: the burst is over
    assert not projector.deferring


def test_a_deferred_burst_is_read_at_the_default_cap_when_the_stream_would_fill(
    deferring, rclient, prefix
):
    """A queue no client set a cap for keeps the scripts' 10,000 events: a burst that
    would fill half of that is read, not left to be trimmed past."""
    queue, projector = deferring
    rclient.hdel(f"{prefix}:q:meta", "opts.maxLenEvents")
    queue.add_bulk([{"name": "burst", "data": {}} for _ in range(5)])
    assert projector.step(block_ms=0) == 0 and projector.unapplied_events == 10
    queue.add_bulk([{"name": "burst", "data": {}} for _ in range(1700)])  # 3,400 new
    assert projector.step(block_ms=0) == 0
    assert projector.unapplied_events == 3410
    assert projector.step(block_ms=0) == 3410


def test_the_periodic_reconcile_waits_until_a_deferred_burst_is_applied(
    make_queue, make_projector, monkeypatch
):
    """The periodic reconcile finds what left no event (a drain). It reads every job
    hash, so it waits while a burst is deferred, and runs once the burst is applied."""
    monkeypatch.setattr(projector_module, "BUSY_EVENTS_PER_S", 1, raising=False)
    queue = make_queue("q")
    gone = queue.add("gone", {})
    projector = make_projector(reconcile_interval=0.0, burst_lag_s=60.0)
    projector.catch_up()
    projector.defer_bursts = True
    queue.drain()  # no per-job events: only a reconcile sees the job gone

    def still_there() -> bool:
        return JobRecord.objects.get(job_id=gone.id).in_redis

    queue.add_bulk([{"name": "burst", "data": {}} for _ in range(5)])
    assert projector.step(block_ms=0) == 0 and projector.deferring
    projector.housekeeping()
    assert still_there()
    assert projector.step(block_ms=0) == 10  # the burst is over: applied
    projector.housekeeping()
    assert not still_there()


def test_a_failed_batch_is_read_again_by_the_next_step(make_queue, make_projector, monkeypatch):
    """The projector moves its positions in memory as it reads; a batch whose rows could
    not be written must not be skipped by the next step of the same projector."""
    queue = make_queue("q")
    queue.add_bulk([{"name": "n", "data": {"i": i}} for i in range(5)])
    projector = make_projector()
    store = projector_module.store

    def store_fails(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise DatabaseError("the database went away")

    monkeypatch.setattr(projector_module, "store", store_fails)
    with pytest.raises(DatabaseError):
        projector.catch_up()
    monkeypatch.setattr(projector_module, "store", store)
    projector.catch_up()
    assert JobRecord.objects.filter(queue="q").count() == 5


def test_flow_rows_know_their_parent_root_and_children(make_queue, make_projector, flow_producer):
    tree = flow_producer.add(
        Flow(
            "report",
            "reports",
            data={"r": 1},
            children=[
                Flow(
                    "extract",
                    "etl",
                    children=[Flow("fetch", "fetchers"), Flow("fetch", "fetchers")],
                ),
                Flow("load", "etl"),
            ],
        )
    )
    make_projector().catch_up()

    root = JobRecord.objects.get(queue="reports", job_id=tree.job.id)
    assert root.state == "waiting-children"
    assert root.children_count == 2 and root.parent_key == ""
    extract = JobRecord.objects.get(queue="etl", name="extract")
    assert extract.parent_key == root.key
    assert (extract.parent_queue, extract.parent_job_id) == ("reports", tree.job.id)
    assert extract.children_count == 2
    fetches = JobRecord.objects.filter(queue="fetchers")
    assert fetches.count() == 2
    assert {row.root_key for row in fetches} == {root.key}
    assert set(JobRecord.objects.filter(root_key=root.key).values_list("name", flat=True)) == {
        "report",
        "extract",
        "load",
        "fetch",
    }


def test_children_added_before_their_parent_row_still_count(
    make_queue, make_projector, flow_producer
):
    tree = flow_producer.add(Flow("p", "parents", children=[Flow("c", "kids")]))
    projector = make_projector()
    projector.catch_up()
    JobRecord.objects.filter(queue="parents").delete()
    projector.catch_up()
    reconcile(queues=["parents"])
    parent = JobRecord.objects.get(queue="parents", job_id=tree.job.id)
    assert parent.children_count == 1


def test_foreign_invalid_json_is_kept_as_raw_text(make_queue, make_projector, rclient, prefix):
    make_queue("q").add("ok", {})
    key = f"{prefix}:q:foreign1"
    rclient.hset(
        key,
        mapping={
            "name": "foreign",
            "data": "{not json",
            "opts": "{}",
            "timestamp": str(int(time.time() * 1000)),
            "progress": "NaN",
        },
    )
    rclient.lpush(f"{prefix}:q:wait", "foreign1")
    rclient.xadd(f"{prefix}:q:events", {"event": "added", "jobId": "foreign1", "name": "foreign"})
    rclient.xadd(f"{prefix}:q:events", {"event": "waiting", "jobId": "foreign1"})

    make_projector().catch_up()

    row = JobRecord.objects.get(queue="q", job_id="foreign1")
    assert row.data == "{not json"
    assert row.progress == "NaN"
    assert sorted(row.invalid_json) == ["data", "progress"]
    assert row.state == "waiting"


def test_progress_retry_and_removal_follow_the_events(make_queue, make_worker, make_projector):
    queue = make_queue("q")
    job = queue.add("flaky", {"x": 1})
    attempts = []

    def process(job):
        attempts.append(job.id)
        job.update_progress({"pct": 50})
        raise RuntimeError("boom <b>")

    worker = make_worker("q", process)
    wait_for(lambda: queue.get_job_state(job.id) == "failed")
    worker.close()
    projector = make_projector()
    projector.catch_up()
    row = JobRecord.objects.get(queue="q", job_id=job.id)
    assert row.state == "failed"
    assert row.failed_reason == "boom <b>"
    assert row.progress == {"pct": 50}
    assert row.attempts_made == 1
    assert any("RuntimeError" in line for line in row.stacktrace)

    queue.get_job(job.id).retry()
    projector.catch_up()
    assert JobRecord.objects.get(pk=row.pk).state == "waiting"

    queue.get_job(job.id).remove()
    projector.catch_up()
    row.refresh_from_db()
    assert row.in_redis is False
    assert row.data == {"x": 1}  # the last copy stays


def test_cleaned_event_triggers_a_queue_reconcile(make_queue, make_worker, make_projector):
    queue = make_queue("q")
    for i in range(5):
        queue.add("a", {"i": i})
    worker = make_worker("q", lambda job: None)
    wait_for(lambda: queue.get_job_counts("completed")["completed"] == 5)
    worker.close()
    projector = make_projector()
    projector.catch_up()
    assert JobRecord.objects.filter(queue="q", in_redis=True).count() == 5

    queue.clean(0, 0, "completed")
    projector.catch_up()
    assert JobRecord.objects.filter(queue="q", in_redis=False).count() == 5


@pytest.mark.slow
def test_mirroring_10000_completed_jobs_is_fast(
    make_queue, make_worker, make_projector, rclient, prefix, capsys
):
    # Keep every event so the projector really applies all of them.
    rclient.hset(f"{prefix}:bulk:meta", "opts.maxLenEvents", "1000000")
    queue = make_queue("bulk")
    for start in range(0, 10_000, 1000):
        queue.add_bulk([{"name": "n", "data": {"i": i}} for i in range(start, start + 1000)])
    worker = make_worker("bulk", lambda job: {"ok": True}, concurrency=50)
    wait_for(
        lambda: queue.get_job_counts("completed")["completed"] == 10_000,
        timeout=120,
        message="10,000 jobs completed",
    )
    worker.close()
    events = rclient.xlen(f"{prefix}:bulk:events")

    projector = make_projector()
    started = time.perf_counter()
    projector.catch_up()
    projected = time.perf_counter() - started
    assert projector.reconciles == 0
    assert projector.events_applied == events
    assert JobRecord.objects.filter(queue="bulk", state="completed").count() == 10_000

    JobRecord.objects.filter(queue="bulk").delete()
    started = time.perf_counter()
    reconcile(queues=["bulk"])
    reconciled = time.perf_counter() - started
    assert JobRecord.objects.filter(queue="bulk", state="completed").count() == 10_000

    with capsys.disabled():
        print(
            f"\nmirror speed: projector {events} events of 10,000 completed jobs in "
            f"{projected:.2f} s ({10_000 / projected:,.0f} jobs/s); "
            f"reconcile of 10,000 jobs in {reconciled:.2f} s"
        )
    assert projected < 20, f"projecting 10,000 jobs took {projected:.1f} s"
    assert reconciled < 20, f"reconciling 10,000 jobs took {reconciled:.1f} s"


def test_foreign_returnvalue_from_event_when_hash_is_gone(make_projector, rclient, prefix):
    rclient.hset(f"{prefix}:q:meta", "opts.maxLenEvents", "10000")
    rclient.xadd(f"{prefix}:q:events", {"event": "added", "jobId": "x1", "name": "ghost"})
    rclient.xadd(
        f"{prefix}:q:events",
        {"event": "completed", "jobId": "x1", "returnvalue": json.dumps([1, 2]), "prev": "active"},
    )
    make_projector().catch_up()
    row = JobRecord.objects.get(queue="q", job_id="x1")
    assert (row.name, row.state, row.returnvalue, row.in_redis) == (
        "ghost",
        "completed",
        [1, 2],
        False,
    )
    assert row.finished_at is not None


def test_events_in_another_field_order_and_values_that_read_as_names(
    make_projector, rclient, prefix
):
    """The projector reads entries as Redis sends them (a flat name, value list): a
    producer that writes jobId before event, a job id that reads as a field name, and a
    returnvalue that does, still fold as their names say."""
    rclient.hset(f"{prefix}:q:meta", "opts.maxLenEvents", "10000")
    events = f"{prefix}:q:events"
    rclient.xadd(events, {"jobId": "x2", "event": "added", "name": "reordered"})
    rclient.xadd(
        events, {"prev": "active", "returnvalue": "7", "jobId": "x2", "event": "completed"}
    )
    rclient.xadd(events, {"event": "added", "jobId": "returnvalue", "name": "prev"})
    rclient.xadd(
        events,
        {"event": "failed", "jobId": "returnvalue", "failedReason": "name", "prev": "active"},
    )
    make_projector().catch_up()
    rows = {row.job_id: row for row in JobRecord.objects.filter(queue="q")}
    assert (rows["x2"].name, rows["x2"].state, rows["x2"].returnvalue) == (
        "reordered",
        "completed",
        7,
    )
    odd = rows["returnvalue"]
    assert (odd.name, odd.state, odd.failed_reason) == ("prev", "failed", "name")


def test_after_a_trim_only_what_changed_is_rewritten(
    make_queue, make_worker, make_projector, rclient, prefix
):
    """Trim recovery costs what changed, not the whole history: rows whose job is still
    in the same state keep their sync time; moved, vanished and re-run jobs are fixed."""
    queue = make_queue("q")
    done = [queue.add("done", {"i": i}) for i in range(6)]
    worker = make_worker("q", lambda job: job.data["i"])
    wait_for(lambda: queue.get_job_counts("completed")["completed"] == 6)
    worker.close()
    waiting = [queue.add("waiting", {"i": i}) for i in range(4)]
    make_projector().catch_up()
    synced = dict(JobRecord.objects.filter(queue="q").values_list("job_id", "synced_at"))

    # Behind the mirror's back, then the stream is trimmed past its position:
    rclient.delete(waiting[0].key)  # gone without an event
    rclient.lrem(queue.keys.key("wait"), 0, waiting[0].id)
    queue.get_job(done[1].id).retry("completed")  # re-run: completes again, later
    worker = make_worker("q", lambda job: job.data["i"] * 10)
    wait_for(lambda: queue.get_job(done[1].id).returnvalue == 10)
    worker.close()
    # the wait list was drained by that worker too: those jobs moved on
    for i in range(3):
        queue.add("late", {"i": i})
    rclient.xtrim(f"{prefix}:q:events", maxlen=2, approximate=False)

    projector = make_projector()
    projector.catch_up()

    assert projector.reconciles == 1
    rows = {row.job_id: row for row in JobRecord.objects.filter(queue="q")}
    assert rows[waiting[0].id].in_redis is False
    assert rows[done[1].id].returnvalue == 10
    for job in waiting[1:]:
        assert rows[job.id].state == "completed"
    untouched = [job.id for job in done if job.id != done[1].id]
    assert all(rows[job_id].synced_at == synced[job_id] for job_id in untouched)
    assert JobRecord.objects.filter(queue="q", name="late", state="waiting").count() == 3


def _command_calls(rclient, command: str) -> int:
    stats = rclient.info("commandstats").get(f"cmdstat_{command}")
    return int(stats["calls"]) if stats else 0


@pytest.mark.parametrize("use_tz", [True, False])
def test_trim_recovery_reads_the_lost_window_not_the_history(
    make_queue, make_worker, make_projector, rclient, prefix, settings, use_tz
):
    """After a trim, jobs that finished before the projector's position are not read again
    (nor checked one by one): a queue that keeps a long history of finished jobs would
    otherwise be scanned whole every time a burst trims the stream, and never catch up.
    (With USE_TZ off too: the window's start is compared with naive finish times.)"""
    settings.USE_TZ = use_tz
    queue = make_queue("q")
    history = 1500  # more than one page of the scan
    queue.add_bulk([{"name": "old", "data": {"i": i}} for i in range(history)])
    worker = make_worker("q", lambda job: job.data["i"], concurrency=50)
    wait_for(lambda: queue.get_job_counts("completed")["completed"] == history, timeout=60)
    worker.close()
    # They finished an hour ago (well before any clock skew the recovery allows for).
    hour_ago = rclient.time()[0] * 1000 - 3_600_000
    pipe = rclient.pipeline()
    for job_id in rclient.zrange(queue.keys.key("completed"), 0, -1):
        pipe.zadd(queue.keys.key("completed"), {job_id: hour_ago})
        pipe.hset(queue.keys.key(job_id), "finishedOn", hour_ago)
    pipe.execute()
    gone = queue.add("gone", {})
    make_projector().catch_up()
    assert JobRecord.objects.filter(queue="q", state="completed").count() == history

    # The lost window: new jobs run, one is removed without an event, the stream is trimmed.
    fresh = [queue.add("new", {"i": i}) for i in range(5)]
    rclient.lrem(queue.keys.key("wait"), 0, gone.id)  # not for the worker: removed below
    worker = make_worker("q", lambda job: job.data["i"] * 10)
    wait_for(lambda: queue.get_job_counts("completed")["completed"] == history + 5)
    worker.close()
    rclient.delete(gone.key)
    rclient.xtrim(f"{prefix}:q:events", maxlen=1, approximate=False)

    rclient.config_resetstat()
    projector = make_projector()
    projector.catch_up()

    assert projector.reconciles == 1
    rows = _rows()
    assert all(rows[job.id].state == "completed" for job in fresh)
    assert [rows[job.id].returnvalue for job in fresh] == [0, 10, 20, 30, 40]
    assert rows[gone.id].in_redis is False
    # Read back: the window's jobs, a page or so of the history at most, never all of it.
    hashes_checked = _command_calls(rclient, "exists") + _command_calls(rclient, "hgetall")
    assert hashes_checked < 200, {k: v["calls"] for k, v in rclient.info("commandstats").items()}


def test_a_trimmed_past_queue_is_held_off_before_its_recovery(
    make_queue, make_projector, rclient, prefix
):
    """Events faster than the projector applies them (workers draining a backlog) trim
    the stream past it. Reconciling at once read job hashes in the middle of the burst,
    for CPU and Redis time the workers need (runworker drained 20,000 jobs at 0.80x
    Node's speed with it, 0.95x when held off), and a recovery outrun again doubles the
    hold. The queue is held off a moment, then reconciled."""
    queue, projector = _held_off_projector(make_queue, make_projector)

    def trimmed_past() -> list:
        jobs = [queue.add("later", {}) for _ in range(3)]
        rclient.xtrim(f"{prefix}:q:events", maxlen=1, approximate=False)
        return jobs

    def recovered(reconciles: int) -> None:
        wait_for(
            lambda: projector.step(block_ms=0) == 0 and projector.reconciles == reconciles,
            timeout=10,
        )

    first = trimmed_past()
    projector.step(block_ms=0)
    assert projector.reconciles == 0
    assert 0 < projector.held_for() <= 0.5
    recovered(1)
    assert JobRecord.objects.filter(job_id__in=[job.id for job in first]).count() == 3

    outran = trimmed_past()  # again, before the projector read to the stream's end
    projector.step(block_ms=0)
    assert projector.reconciles == 1
    assert 0.5 < projector.held_for() <= 1.0  # doubled
    assert not JobRecord.objects.filter(job_id__in=[job.id for job in outran]).exists()
    recovered(2)
    assert JobRecord.objects.filter(job_id__in=[job.id for job in outran]).count() == 3

    projector.catch_up()  # it reads to the end: caught up, the hold starts over
    trimmed_past()
    projector.step(block_ms=0)
    assert projector.reconciles == 2 and 0 < projector.held_for() <= 0.5


def test_a_queue_whose_events_key_is_not_a_stream_does_not_stop_the_others(
    make_queue, make_projector, rclient, prefix, caplog
):
    """The projector reads every queue's stream in one XREAD, which a key holding another
    kind of value (another client's string at `bad:events`) made fail for all of them:
    no queue was mirrored. That queue is held off, named in a warning, and looked at
    again later; the others are mirrored."""
    rclient.hset(f"{prefix}:bad:meta", "opts.maxLenEvents", "10000")
    rclient.set(f"{prefix}:bad:events", "another client's value")
    good = make_queue("good")
    first = good.add("first", {"n": 1})
    projector = make_projector()
    projector.catch_up()
    assert set(_rows("good")) == {first.id}
    assert any(
        f"{prefix}:bad:events" in record.getMessage() and "not a stream" in record.getMessage()
        for record in caplog.records
    )
    second = good.add("second", {"n": 2})
    projector.step(block_ms=50)  # idle reads (XREAD BLOCK) leave the held stream out too
    projector.catch_up()
    assert set(_rows("good")) == {first.id, second.id}
    assert rclient.get(f"{prefix}:bad:events") == "another client's value"


@pytest.mark.django_db(transaction=True)
def test_the_projector_loop_keeps_no_query_log_with_debug_on(settings, make_queue, make_projector):
    """The projector's thread applies batch after batch for as long as runworker runs. With
    DEBUG on, Django logs every query of its connection, SQL included (a batch's upsert is
    megabytes), until something clears the log; each step of the loop clears it."""
    settings.DEBUG = True
    queue = make_queue("q")
    projector = make_projector(block_ms=50, coalesce_ms=0)

    def ten_batches() -> None:
        for n in range(1, 11):
            queue.add("job", {"n": n})
            wait_for(
                lambda n=n: JobRecord.objects.filter(queue="q").count() == n,
                message=f"job {n} mirrored",
            )

    logged = query_log_left_by(projector.run, ten_batches)
    # ten batches applied: three statements each at least, were they all kept
    assert logged < 10, logged
