"""The runner in this process: the mirror hook, import hygiene, burst bookkeeping."""

from __future__ import annotations

import subprocess
import sys
import threading

import pytest

from flowjobs import conf, runner
from tests.django.conftest import REPO


def test_import_flowjobs_does_not_import_django():
    code = (
        "import sys, flowjobs; "
        "from flowjobs import Queue, Worker, FlowProducer, Flow; "
        "assert not [m for m in sys.modules if m.startswith('django')], 'django imported'"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=60)


@pytest.fixture
def mirror_calls(monkeypatch):
    import flowjobs.mirror

    calls: list[threading.Event] = []
    monkeypatch.setattr(flowjobs.mirror, "start_in_worker", calls.append)
    return calls


def test_runworker_starts_the_mirror_once_when_enabled(settings, mirror_calls):
    settings.FLOWJOBS = {**settings.FLOWJOBS, "MIRROR": True}
    code = runner.WorkerProcess(runner.RunOptions(queues=["fj-echo"], burst=True)).run()
    assert code == runner.EXIT_OK
    assert len(mirror_calls) == 1
    assert mirror_calls[0].is_set()  # told to stop when runworker stops


def test_mirror_is_not_started_when_disabled_or_in_a_child(settings, mirror_calls):
    runner.WorkerProcess(runner.RunOptions(queues=["fj-echo"], burst=True)).run()
    settings.FLOWJOBS = {**settings.FLOWJOBS, "MIRROR": True}
    runner.WorkerProcess(runner.RunOptions(queues=["fj-echo"], burst=True, child=True)).run()
    runner.WorkerProcess(runner.RunOptions(queues=["fj-echo"], burst=True, mirror=False)).run()
    assert mirror_calls == []


@pytest.mark.django_db(transaction=True)
def test_supervisor_starts_the_mirror_once_for_all_children(
    settings, mirror_calls, monkeypatch, worker_env
):
    settings.FLOWJOBS = {**settings.FLOWJOBS, "MIRROR": True}
    for name in ("FLOWJOBS_REDIS_URL", "FLOWJOBS_PREFIX", "DATABASE_URL", "PYTHONPATH"):
        monkeypatch.setenv(name, worker_env[name])
    queue = conf.get_queue("fj-echo")
    jobs = [queue.add("hello", {"n": n}) for n in range(10)]
    supervisor = runner.Supervisor(
        runner.RunOptions(queues=["fj-echo"], burst=True), 2, ["fj-echo", "--burst"]
    )
    assert supervisor.run() == runner.EXIT_OK
    assert len(mirror_calls) == 1
    assert all(queue.get_job_state(job.id) == "completed" for job in jobs)


def test_queue_is_drained_rules(redis_url, prefix):
    queue = conf.get_queue("drain-rules")
    assert runner.queue_is_drained(queue)
    queue.add("later", {}, delay=60_000)
    assert runner.queue_is_drained(queue)  # delayed, not due yet
    job = queue.add("now", {})
    assert not runner.queue_is_drained(queue)
    queue.pause()
    assert runner.queue_is_drained(queue)  # paused: nothing will run
    queue.resume()
    queue.get_job(job.id).remove()
    queue.add("urgent", {}, priority=1)
    assert not runner.queue_is_drained(queue)


def test_resolve_queues():
    assert "fj-echo" in runner.resolve_queues([])
    assert runner.resolve_queues(["fj-echo", "fj-echo"]) == ["fj-echo"]
    with pytest.raises(runner.FatalError, match="no processor registered for queue"):
        runner.resolve_queues(["fj-echo", "nope"])


def test_max_memory_recycles(settings):
    process = runner.WorkerProcess(runner.RunOptions(queues=["fj-echo"], max_memory_mb=1))
    assert process.run() == runner.EXIT_OK
    assert "--max-memory 1" in process.stop_reason
    child = runner.WorkerProcess(runner.RunOptions(queues=["fj-echo"], max_memory_mb=1, child=True))
    assert child.run() == runner.EXIT_RECYCLE


@pytest.mark.django_db(transaction=True)
def test_signal_receivers_may_use_the_orm():
    from flowjobs import signals
    from tests.testapp.models import Note

    def on_completed(sender, job, result, **kwargs):
        Note.objects.create(text=f"{sender} {job.id} {result}")

    signals.job_completed.connect(on_completed)
    try:
        job = conf.get_queue("fj-echo").add("hello", {"n": 1})
        code = runner.WorkerProcess(runner.RunOptions(queues=["fj-echo"], burst=True)).run()
    finally:
        signals.job_completed.disconnect(on_completed)
    assert code == runner.EXIT_OK
    assert list(Note.objects.values_list("text", flat=True)) == [
        f"fj-echo {job.id} {{'echo': {{'n': 1}}}}"
    ]
