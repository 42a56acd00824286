"""The runner in this process: the background services process, import hygiene, burst
bookkeeping."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from itertools import pairwise

import pytest

from flowjobs import conf, runner
from tests.django.conftest import REPO
from tests.helpers import wait_for


def test_import_flowjobs_does_not_import_django():
    code = (
        "import sys, flowjobs; "
        "from flowjobs import Queue, Worker, FlowProducer, Flow; "
        "assert not [m for m in sys.modules if m.startswith('django')], 'django imported'"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=60)


def _mirrored_ids(prefix: str) -> set[str]:
    from flowjobs.models import JobRecord

    return set(
        JobRecord.objects.filter(prefix=prefix, queue="fj-echo", state="completed").values_list(
            "job_id", flat=True
        )
    )


@pytest.mark.parametrize("processes", [1, 2])
@pytest.mark.django_db(transaction=True)
def test_the_mirror_runs_in_one_services_process_restarted_when_it_dies(
    settings, monkeypatch, worker_env, prefix, processes
):
    settings.FLOWJOBS = {**settings.FLOWJOBS, "MIRROR": True}
    for name in ("FLOWJOBS_REDIS_URL", "FLOWJOBS_PREFIX", "DATABASE_URL", "PYTHONPATH"):
        monkeypatch.setenv(name, worker_env[name])
    monkeypatch.setenv("FLOWJOBS_MIRROR", "true")
    # the killed projector's lock must expire before the new process takes over
    monkeypatch.setenv("FLOWJOBS_MIRROR_LOCK_TTL_MS", "1500")
    queue = conf.get_queue("fj-echo")
    options = runner.RunOptions(queues=["fj-echo"])
    if processes == 1:
        run = runner.WorkerProcess(options)
    else:
        run = runner.Supervisor(options, processes, ["fj-echo"])
    started: list[runner.ServicesChild] = []
    real_start = runner.ServicesChild.start

    def start(services: runner.ServicesChild) -> None:
        started.append(services)
        real_start(services)

    monkeypatch.setattr(runner.ServicesChild, "start", start)
    codes: list[int] = []
    thread = threading.Thread(target=lambda: codes.append(run.run()))
    thread.start()
    try:
        wait_for(lambda: started and started[0].process, message="no services process")
        [services] = started
        first_pid = services.process.pid
        jobs = [queue.add("hello", {"n": n}) for n in range(5)]
        wait_for(
            lambda: _mirrored_ids(prefix) >= {job.id for job in jobs},
            timeout=30,
            message="the services process did not mirror the jobs",
        )
        # the projector is not a thread of the worker's process
        assert not [t for t in threading.enumerate() if t.name == "flowjobs-mirror"]

        os.kill(first_pid, signal.SIGKILL)
        wait_for(
            lambda: services.process and services.process.pid != first_pid,
            timeout=20,
            message="the services process was not restarted",
        )
        more = queue.add("hello", {"n": 99})
        wait_for(lambda: more.id in _mirrored_ids(prefix), timeout=30, message="not mirrored")
        second = services.process
    finally:
        run.signals.event.set()
        thread.join(60)
    assert codes == [runner.EXIT_OK]
    assert second.poll() is not None  # stopped with the runworker
    assert services.process is None


def test_services_are_wanted_by_the_top_runworker_only(settings):
    settings.FLOWJOBS = {**settings.FLOWJOBS, "MIRROR": True, "OUTBOX_RELAY": True}
    current = conf.settings()
    both = ["mirror", "outbox-relay"]
    assert runner.wanted_services(runner.RunOptions(queues=[]), current) == both
    assert runner.wanted_services(runner.RunOptions(queues=[], child=True), current) == []
    assert runner.wanted_services(runner.RunOptions(queues=[], mirror=False), current) == [
        "outbox-relay"
    ]
    settings.FLOWJOBS = {**settings.FLOWJOBS, "MIRROR": False, "OUTBOX_RELAY": False}
    assert runner.wanted_services(runner.RunOptions(queues=[]), conf.settings()) == []


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


def test_a_services_process_that_keeps_dying_is_restarted_less_and_less_often(monkeypatch):
    """A services process that cannot start (here: its settings module does not import)
    was booted again every second for as long as runworker ran, each time a Django start
    on a machine that may be short of CPU already: the pause before a restart doubles
    while the process keeps dying young."""
    monkeypatch.setattr(runner, "SERVICES_RESTART_FIRST_S", 0.2, raising=False)
    spawned: list[float] = []
    real_spawn = runner.spawn_runworker

    def spawn(argv, env, what):
        spawned.append(time.monotonic())
        return real_spawn(argv, env, what)

    monkeypatch.setattr(runner, "spawn_runworker", spawn)
    services = runner.ServicesChild(["outbox-relay"])
    services.env = {**os.environ, "DJANGO_SETTINGS_MODULE": "no_such_settings_module"}
    services._spawn()
    try:

        def restarts() -> int:
            services.check()
            return len(spawned)

        wait_for(lambda: restarts() >= 5, timeout=60, interval=0.02)
    finally:
        services.stop()
    gaps = [later - earlier for earlier, later in pairwise(spawned)]
    # each pause at least the doubled one before it (a process's short life adds to each)
    for number, gap in enumerate(gaps):
        assert gap >= 0.2 * 2**number, f"restart {number + 1} came {gap:.2f} s after the last"
