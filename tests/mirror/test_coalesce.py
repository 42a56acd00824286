"""At low rates the projector lets events gather into one transaction (MIRROR_COALESCE_MS)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from django.db import connection

from flowjobs import mirror
from flowjobs.models import JobRecord
from tests.helpers import wait_for

pytestmark = pytest.mark.django_db(transaction=True)


@contextmanager
def _running(projector: mirror.Projector) -> Iterator[threading.Event]:
    stop = threading.Event()

    def project() -> None:
        try:
            projector.run(stop)
        finally:
            connection.close()  # this thread's own connection, or PostgreSQL keeps the test DB

    thread = threading.Thread(target=project, daemon=True)
    thread.start()
    try:
        yield stop
    finally:
        stop.set()
        thread.join(5)
        assert not thread.is_alive(), "the projector did not stop while waiting for events"


def _mirrored(count: int) -> bool:
    return JobRecord.objects.filter(queue="q").count() == count


def test_a_trickle_of_jobs_is_applied_in_a_few_batches(make_queue, make_projector):
    queue = make_queue("q")
    queue.add("first", {})  # the queue exists before the projector discovers it
    projector = make_projector(coalesce_ms=1500, block_ms=100)
    with _running(projector):
        wait_for(lambda: _mirrored(1), message="first job mirrored")
        before = projector.batches_applied
        # One job every 10 ms, as a worker at concurrency 1 hands them out: without
        # coalescing each arrives alone and becomes its own transaction.
        start = time.monotonic()
        for n in range(20):
            queue.add("trickle", {"n": n})
            time.sleep(max(0.0, start + (n + 1) * 0.01 - time.monotonic()))  # pacing the load
        wait_for(lambda: _mirrored(21), message="every trickled job mirrored")
        batches = projector.batches_applied - before
    assert batches <= 3, f"20 trickled jobs took {batches} transactions"


def test_full_batches_do_not_wait_and_stopping_cuts_the_wait_short(make_queue, make_projector):
    queue = make_queue("q")
    for n in range(12):  # "added" and "waiting" events: 24 entries, batches of 5
        queue.add("prefilled", {"n": n})
    projector = make_projector(batch_size=5, coalesce_ms=60_000)
    with _running(projector):
        # Waiting a minute after any batch but the last, short one would miss this deadline.
        wait_for(lambda: _mirrored(12), timeout=20, message="every prefilled job mirrored")
        assert projector.events_applied == 24  # read 5 at a time, applied without a wait
        wait_for(lambda: projector.trickling, message="projector waiting for more events")
    # _running's exit asserts the projector stopped within 5 s, not after the minute.


def test_coalesce_setting_is_read_and_checked(settings, flowjobs_settings):
    assert mirror.mirror_settings().coalesce_ms == 200
    settings.FLOWJOBS = {**flowjobs_settings, "MIRROR_COALESCE_MS": 50}
    assert mirror.mirror_settings().coalesce_ms == 50
    assert mirror.check_settings() == []
    settings.FLOWJOBS = {**flowjobs_settings, "MIRROR_COALESCE_MS": -1}
    assert mirror.check_settings() == ["FLOWJOBS MIRROR_COALESCE_MS must be >= 0"]
    settings.FLOWJOBS = {**flowjobs_settings, "MIRROR_COALESCE_MS": 20_000}
    assert mirror.check_settings() == [
        "FLOWJOBS MIRROR_COALESCE_MS must be under a third of MIRROR_LOCK_TTL_MS"
    ]
