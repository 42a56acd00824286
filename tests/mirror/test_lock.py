"""One projector per deployment: the Redis lock, standby and takeover."""

from __future__ import annotations

import threading
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.db import connections

from flowjobs import mirror
from flowjobs.models import JobRecord, LeaseFence
from tests.helpers import wait_for


def test_lock_is_exclusive_renewable_and_released(rclient, prefix):
    key = f"{prefix}:flowjobs:mirror-lock"
    first = mirror.MirrorLock(rclient, key, ttl_ms=5000)
    second = mirror.MirrorLock(rclient, key, ttl_ms=5000)
    assert first.acquire()
    assert not second.acquire()
    assert first.renew() and not second.renew()
    second.release()  # not the holder: no effect
    assert rclient.get(key) == first.token
    first.release()
    assert second.acquire()
    with pytest.raises(mirror.LockLost):
        first._renewed_at = 0
        first.keep()


def _fast() -> mirror.MirrorSettings:
    """Mirror settings with a short lease and short waits (takeovers within a second)."""
    return mirror.MirrorSettings(
        **{
            **mirror.mirror_settings().__dict__,
            "lock_ttl_ms": 900,
            "block_ms": 100,
            "discover_interval": 0.2,
        }
    )


class _Contender:
    def __init__(self, config: mirror.MirrorSettings, rclient) -> None:
        self.stop = threading.Event()
        self.states: list[str] = []
        self.thread = threading.Thread(
            target=mirror.run_mirror,
            args=(self.stop,),
            kwargs={"config": config, "client": rclient, "on_state": self.states.append},
            daemon=True,
        )
        self.thread.start()

    @property
    def state(self) -> str | None:
        return self.states[-1] if self.states else None

    def close(self) -> None:
        self.stop.set()
        self.thread.join(10)
        assert not self.thread.is_alive()


@pytest.mark.django_db(transaction=True)
def test_one_projector_runs_and_a_standby_takes_over(flowjobs_settings, make_queue, rclient):
    config = _fast()
    first = _Contender(config, rclient)
    wait_for(lambda: first.state == "projecting", message="first projector running")
    second = _Contender(config, rclient)
    try:
        wait_for(lambda: second.state == "standby", message="second projector standing by")
        queue = make_queue("q")
        job = queue.add("a", {"n": 1})
        wait_for(lambda: JobRecord.objects.filter(job_id=job.id).exists(), message="mirrored")
        assert "projecting" not in second.states

        first.close()  # releases the lock
        wait_for(lambda: second.state == "projecting", message="takeover after release")
        later = queue.add("b", {"n": 2})
        wait_for(lambda: JobRecord.objects.filter(job_id=later.id).exists(), message="mirrored")
    finally:
        first.close()
        second.close()


@pytest.mark.django_db(transaction=True)
def test_a_crashed_holder_is_replaced_when_its_lock_expires(flowjobs_settings, rclient):
    config = mirror.MirrorSettings(
        **{
            **mirror.mirror_settings().__dict__,
            "lock_ttl_ms": 900,
            "block_ms": 100,
            "discover_interval": 0.2,
        }
    )
    rclient.set(config.lock_key, "dead-host:1:abc", px=700)  # a holder that stopped renewing
    contender = _Contender(config, rclient)
    try:
        wait_for(lambda: contender.state == "standby")
        wait_for(lambda: contender.state == "projecting", timeout=5, message="takeover")
        assert rclient.get(config.lock_key) != "dead-host:1:abc"
    finally:
        contender.close()
    assert rclient.get(config.lock_key) is None  # released on the way out


@pytest.mark.django_db(transaction=True)
def test_start_in_worker_follows_the_mirror_setting(settings, flowjobs_settings):
    settings.FLOWJOBS = {**flowjobs_settings, "MIRROR": False}
    assert mirror.start_in_worker(threading.Event()) is None

    settings.FLOWJOBS = {**flowjobs_settings, "MIRROR": True, "MIRROR_BLOCK_MS": 100}
    stop = threading.Event()
    thread = mirror.start_in_worker(stop)
    assert thread is not None and thread.daemon
    wait_for(lambda: mirror.redis_client().get(mirror.mirror_settings().lock_key))
    stop.set()
    thread.join(10)
    assert not thread.is_alive()


@pytest.mark.django_db(transaction=True)
def test_syncjobs_once_beside_a_projector_has_the_projector_reconcile(
    flowjobs_settings, make_queue, rclient
):
    """A second writer beside the lease holder could commit a row it read before the
    projector committed a newer state (and stay wrong until the next full reconcile):
    `syncjobs --once` asks the holder to reconcile, fenced, and reports its counts."""
    holder = _Contender(_fast(), rclient)
    try:
        wait_for(lambda: holder.state == "projecting", message="a projector holds the lease")
        queue = make_queue("q")
        jobs = [queue.add("n", {"i": i}) for i in range(3)]
        wait_for(lambda: JobRecord.objects.filter(queue="q").count() == 3, message="mirrored")
        rclient.hset(jobs[0].key, "name", "renamed")  # no event: only a reconcile sees it

        out = StringIO()
        call_command("syncjobs", "--once", stdout=out)

        assert JobRecord.objects.get(queue="q", job_id=jobs[0].id).name == "renamed"
        assert "q: 3 job(s) mirrored" in out.getvalue()
        assert "reconciled by the projector holding the lease" in out.getvalue()
    finally:
        holder.close()


@pytest.mark.django_db(transaction=True)
def test_syncjobs_once_without_a_projector_holds_the_lease_itself(
    flowjobs_settings, make_queue, rclient, prefix
):
    queue = make_queue("q")
    queue.add("n", {})
    key = f"{prefix}:flowjobs:mirror-lock"
    call_command("syncjobs", "--once", verbosity=0)
    assert JobRecord.objects.filter(queue="q").count() == 1
    assert LeaseFence.objects.get(name=key).fence >= 1  # its writes were fenced
    assert not rclient.exists(key)  # and it let the lease go


@pytest.mark.django_db(transaction=True)
def test_syncjobs_once_names_a_holder_that_does_not_answer(flowjobs_settings, rclient, prefix):
    key = f"{prefix}:flowjobs:mirror-lock"
    rclient.set(key, "elsewhere:4242:abc", px=60_000)  # a holder that never reconciles
    with pytest.raises(CommandError, match=r"elsewhere:4242:abc.*did not reconcile within 1"):
        call_command("syncjobs", "--once", "--timeout", "1", verbosity=0)
    assert not rclient.llen(f"{key}:reconcile")  # the unanswered request was taken back


@pytest.mark.django_db(transaction=True)
def test_a_reconcile_asked_of_a_holder_that_loses_the_lease_is_done_by_the_next(
    flowjobs_settings, make_queue, rclient, prefix
):
    """The holder takes the request off the list, then loses the lease in the middle of
    the reconcile: the request went with it, and ``syncjobs --once`` waited for an answer
    nobody would give until its timeout (15 minutes by default)."""
    from flowjobs.lease import FencedLease, LeaseLost, fenced_atomic, highest_fence
    from flowjobs.mirror.repair import answer_reconcile_requests, reconcile_with_lease

    make_queue("q").add("job", {})
    config = mirror.mirror_settings()
    first = FencedLease(rclient, config.lock_key, config.lock_ttl_ms)
    assert first.acquire(floor=highest_fence(first.key))
    answers: list[tuple[mirror.ReconcileResult, str | None]] = []

    def ask() -> None:
        try:
            answers.append(reconcile_with_lease(rclient, config, timeout=60))
        finally:
            connections.close_all()  # this thread's, or the test database outlives the run

    asking = threading.Thread(target=ask)
    asking.start()
    try:
        wait_for(lambda: rclient.llen(f"{config.lock_key}:reconcile") == 1, message="no request")
        # The first holder was paused past its TTL, and another took the lease and wrote.
        rclient.delete(first.key)
        second = FencedLease(rclient, config.lock_key, config.lock_ttl_ms)
        assert second.acquire(floor=highest_fence(second.key))
        with fenced_atomic(second):
            pass
        with pytest.raises(LeaseLost):
            answer_reconcile_requests(first, prefix)  # wakes up, takes the request, fails
        assert answer_reconcile_requests(second, prefix) == 1
        asking.join(30)
        assert answers, "the request was never answered"
        result, by = answers[0]
        assert by == second.token
        assert result.queues == 1
        assert JobRecord.objects.filter(prefix=prefix, queue="q").count() == 1
    finally:
        asking.join(90)
