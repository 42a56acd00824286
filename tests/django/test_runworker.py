"""runworker as a real process: burst, signals, supervisor restarts, unknown names, DB loss."""

from __future__ import annotations

import os
import re
import signal

import pytest
import redis

from flowjobs import conf
from tests.helpers import cpu_hogs, free_port, wait_for
from tests.testapp.models import Note

pytestmark = pytest.mark.django_db(transaction=True)


def _job_state(queue_name: str, job_id: str) -> str:
    return conf.get_queue(queue_name).get_job_state(job_id)


def test_burst_processes_every_registered_queue_then_exits_zero(start_worker):
    echo = conf.get_queue("fj-echo").add("hello", {"n": 1})
    add = conf.get_queue("fj-named").add("add", {"a": 2, "b": 3})
    upper = conf.get_queue("fj-named").add("upper", {"text": "abc"})
    note = conf.get_queue("fj-orm").add("note", {"text": "from a worker"})

    worker = start_worker("--burst")
    assert worker.wait() == 0, worker.output()

    assert conf.get_queue("fj-echo").get_job(echo.id).returnvalue == {"echo": {"n": 1}}
    assert conf.get_queue("fj-named").get_job(add.id).returnvalue == 5
    assert conf.get_queue("fj-named").get_job(upper.id).returnvalue == "ABC"
    assert conf.get_queue("fj-orm").get_job(note.id).returnvalue == 1
    assert list(Note.objects.values_list("text", flat=True)) == ["from a worker"]
    output = worker.output()
    assert f"job {echo.id} " not in output  # no per-job line at the default verbosity
    assert "burst: no jobs left" in output


def test_runworker_sets_each_queues_events_cap_from_the_settings(start_worker, settings, prefix):
    """EVENTS_MAX_LENGTH (QUEUES entries may override it) goes to each queue's meta, where
    every script that emits an event reads the cap it trims the stream to."""
    echo, named = conf.get_queue("fj-echo"), conf.get_queue("fj-named")
    assert echo.get_events_max_length() == named.get_events_max_length() == 10_000
    worker = start_worker(
        "fj-echo",
        "fj-named",
        "--burst",
        env={"FLOWJOBS_QUEUES": '{"fj-named": {"EVENTS_MAX_LENGTH": 2000}}'},
    )
    assert worker.wait() == 0, worker.output()
    assert echo.get_events_max_length() == 100_000
    assert named.get_events_max_length() == 2000


@pytest.mark.parametrize("fetch_ahead", ["", "false"])
def test_fetch_ahead_takes_the_job_after_a_short_one_unless_set_off(start_worker, fetch_ahead):
    """FETCH_AHEAD (default on): the second job runs while the third is already taken."""
    queue = conf.get_queue("fj-peek")
    queue.add("state-of", {})
    second = queue.add("state-of", {"id": "placeholder"})
    third = queue.add("state-of", {})
    queue.get_job(second.id).update_data({"id": third.id})
    env = {"FLOWJOBS_FETCH_AHEAD": fetch_ahead} if fetch_ahead else {}
    worker = start_worker("fj-peek", "--burst", env=env)
    assert worker.wait() == 0, worker.output()
    expected = "waiting" if fetch_ahead == "false" else "active"
    assert queue.get_job(second.id).returnvalue == expected


def test_unknown_job_name_fails_with_a_clear_reason_and_the_next_job_succeeds(start_worker):
    queue = conf.get_queue("fj-named")
    unknown = queue.add("nope", {}, attempts=3)
    known = queue.add("add", {"a": 1, "b": 1})

    worker = start_worker("fj-named", "--burst")
    assert worker.wait() == 0, worker.output()

    failed = queue.get_job(unknown.id)
    assert failed.get_state() == "failed"
    assert failed.failed_reason == 'no processor registered for job "nope" in queue "fj-named"'
    assert failed.attempts_made == 1  # not retried: retrying cannot help
    assert queue.get_job(known.id).returnvalue == 2


def test_sigterm_lets_the_active_job_finish_then_exits_zero(start_worker, redis_client, prefix):
    job = conf.get_queue("fj-slow").add("long", {})
    worker = start_worker("fj-slow")
    wait_for(
        lambda: redis_client.lrange(f"{prefix}:fj-test:started", 0, -1) == [job.id],
        timeout=20,
        message="the slow job never started",
    )

    worker.signal(signal.SIGTERM)
    wait_for(lambda: "waiting for 1 active job" in worker.output(), message=worker.output)
    assert worker.proc.poll() is None
    redis_client.rpush(f"{prefix}:fj-test:release", "go")

    assert worker.wait() == 0, worker.output()
    finished = conf.get_queue("fj-slow").get_job(job.id)
    assert finished.get_state() == "completed"
    assert finished.returnvalue == "finished"


def test_a_second_signal_stops_at_once_with_a_non_zero_status(start_worker, redis_client, prefix):
    job = conf.get_queue("fj-slow").add("long", {})
    worker = start_worker("fj-slow")
    wait_for(lambda: redis_client.lrange(f"{prefix}:fj-test:started", 0, -1), timeout=20)

    worker.signal(signal.SIGTERM)
    wait_for(lambda: "waiting for 1 active job" in worker.output(), message=worker.output)
    worker.signal(signal.SIGTERM)

    assert worker.wait() == 1, worker.output()
    assert "second signal" in worker.output()
    # Left active for the stalled-job check to recover.
    assert _job_state("fj-slow", job.id) == "active", (
        conf.get_queue("fj-slow").get_job(job.id).failed_reason
    )
    redis_client.rpush(f"{prefix}:fj-test:release", "go")


def test_supervisor_restarts_a_killed_child_and_the_queue_keeps_moving(
    start_worker, redis_client, prefix
):
    worker = start_worker("fj-echo", "--processes", "2")

    def children() -> list[int]:
        return [int(p) for p in re.findall(r"started worker process (\d+)", worker.output())]

    first = wait_for(lambda: len(children()) >= 2 and children(), timeout=20)
    # Both children are up once each has set its Redis client name.
    queue = conf.get_queue("fj-echo")
    wait_for(lambda: len(queue.get_workers()) >= 2, timeout=20, message=worker.output)

    import os

    os.kill(first[0], signal.SIGKILL)
    wait_for(lambda: len(children()) >= 3, timeout=20, message=worker.output)
    assert f"worker process {first[0]} killed by signal {signal.SIGKILL}" in worker.output()
    new_pid = children()[2]
    assert new_pid not in first
    wait_for(lambda: f"(pid {new_pid}): queues fj-echo" in worker.output(), timeout=20)

    jobs = [queue.add("hello", {"n": n}) for n in range(20)]
    wait_for(
        lambda: all(queue.get_job_state(j.id) == "completed" for j in jobs),
        timeout=20,
        message=worker.output,
    )

    worker.signal(signal.SIGTERM)
    assert worker.wait() == 0, worker.output()
    for pid in (first[1], new_pid):
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_worker_keeps_going_after_its_database_connection_is_broken(start_worker):
    queue = conf.get_queue("fj-orm")
    before = queue.add("note", {"text": "before"})
    sabotage = queue.add("sabotage", {})
    after = queue.add("note", {"text": "after"})

    worker = start_worker("fj-orm", "--burst", "--concurrency", "1")
    assert worker.wait() == 0, worker.output()

    assert queue.get_job_state(before.id) == "completed"
    assert queue.get_job_state(sabotage.id) in ("completed", "failed")
    assert queue.get_job_state(after.id) == "completed", queue.get_job(after.id).failed_reason
    assert sorted(Note.objects.values_list("text", flat=True)) == ["after", "before"]


def test_max_jobs_makes_a_single_worker_exit_zero_and_say_why(start_worker):
    queue = conf.get_queue("fj-echo")
    jobs = [queue.add("hello", {"n": n}) for n in range(3)]

    worker = start_worker("fj-echo", "--max-jobs", "2")
    assert worker.wait() == 0, worker.output()

    assert "--max-jobs 2" in worker.output()
    done = [j for j in jobs if queue.get_job_state(j.id) == "completed"]
    assert len(done) >= 2


def test_supervisor_replaces_recycled_children_in_burst_mode(start_worker):
    queue = conf.get_queue("fj-echo")
    jobs = [queue.add("hello", {"n": n}) for n in range(6)]

    worker = start_worker("fj-echo", "--processes", "2", "--max-jobs", "1", "--burst")
    assert worker.wait(60) == 0, worker.output()

    assert all(queue.get_job_state(j.id) == "completed" for j in jobs)
    assert "recycled itself" in worker.output()


def test_unreachable_redis_is_fatal_at_start(start_worker):
    url = f"redis://:secret@127.0.0.1:{free_port()}/0"
    worker = start_worker("fj-echo", env={"FLOWJOBS_REDIS_URL": url})
    assert worker.wait() == 1
    output = worker.output()
    assert "cannot reach Redis at redis://:***@127.0.0.1:" in output
    assert "secret" not in output


def test_queue_without_processor_is_an_error(start_worker):
    worker = start_worker("no-such-queue", "--burst")
    assert worker.wait() == 1
    assert "no processor registered for queue(s) no-such-queue" in worker.output()


def test_eviction_policy_warning(start_worker, redis_server):
    client = redis_server.client()
    client.config_set("maxmemory-policy", "allkeys-lru")
    try:
        worker = start_worker("fj-echo", "--burst")
        assert worker.wait() == 0, worker.output()
    finally:
        client.config_set("maxmemory-policy", "noeviction")
    assert 'maxmemory-policy "allkeys-lru"' in worker.output()


def test_redis_password_urls_reach_the_worker(start_worker, prefix):
    from tests.redis_server import RedisServer

    server = RedisServer(password="s3cret")
    try:
        url = server.url
        assert "s3cret" in url
        client = redis.Redis.from_url(url, decode_responses=True)
        from flowjobs.engine import Queue

        queue = Queue("fj-echo", connection=url, prefix=prefix)
        job = queue.add("hello", {"n": 7})
        worker = start_worker("fj-echo", "--burst", env={"FLOWJOBS_REDIS_URL": url})
        assert worker.wait() == 0, worker.output()
        assert queue.get_job(job.id).returnvalue == {"echo": {"n": 7}}
        assert "s3cret" not in worker.output()
        client.close()
        queue.close()
    finally:
        server.close()


def test_the_services_process_stops_when_its_runworker_is_killed(start_worker):
    import os

    worker = start_worker("fj-echo", env={"FLOWJOBS_MIRROR": "true"})
    found = wait_for(
        lambda: re.search(r"started background services process (\d+)", worker.output()),
        timeout=20,
        message=worker.output,
    )
    services_pid = int(found.group(1))
    wait_for(lambda: "background services mirror" in worker.output(), timeout=20)

    worker.signal(signal.SIGKILL)
    worker.wait()

    def gone() -> bool:
        try:
            os.kill(services_pid, 0)
        except ProcessLookupError:
            return True
        # a zombie until init reaps it counts as gone
        with open(f"/proc/{services_pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] == "Z"

    wait_for(gone, timeout=20, message="the services process outlived its runworker")
    assert "parent is gone; stopping background services" in worker.output()


def test_a_services_process_whose_runworker_died_before_it_started_does_not_run(start_worker):
    """The parent can be gone (SIGKILLed, or a quick --burst run) before its services
    child asks for its parent's pid: the child then sees pid 1, and used to run for ever."""
    import subprocess
    import sys

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    services = start_worker(
        "--services", "--service=outbox-relay", env={"FLOWJOBS_RUNWORKER_PID": str(dead.pid)}
    )
    assert services.wait() == 0, services.output()
    assert "parent is gone; not starting background services" in services.output()


def _niceness(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as stat:
        return int(stat.read().rsplit(")", 1)[1].split()[16])


@pytest.mark.parametrize("configured", [None, "0", "5"])
def test_the_services_process_runs_below_the_workers(start_worker, configured):
    """The mirror must not take the CPU the workers need: SERVICES_NICENESS (default 10)."""
    env = {"FLOWJOBS_MIRROR": "true"}
    if configured is not None:
        env["FLOWJOBS_SERVICES_NICENESS"] = configured
    worker = start_worker("fj-echo", env=env)
    services = _services_pid(worker)
    wait_for(lambda: "background services mirror" in worker.output(), timeout=20)
    expected = 10 if configured is None else int(configured)
    assert _niceness(services) == _niceness(worker.pid) + expected


def _services_pid(worker) -> int:
    """The pid of the background-services process ``worker`` (a runworker) started."""
    found = wait_for(
        lambda: re.search(r"started background services process (\d+)", worker.output()),
        timeout=20,
        message=worker.output,
    )
    return int(found.group(1))


def _idle_threads(pid: int) -> list[int] | None:
    """Thread ids of process ``pid`` under Linux's SCHED_IDLE policy; None when the
    process is gone (a thread that ends meanwhile is left out)."""
    try:
        tids = [int(tid) for tid in os.listdir(f"/proc/{pid}/task")]
    except FileNotFoundError:
        return None
    idle = []
    for tid in tids:
        try:
            if os.sched_getscheduler(tid) == os.SCHED_IDLE:
                idle.append(tid)
        except ProcessLookupError:
            continue
    return idle


@pytest.mark.parametrize("configured", [None, "false"])
def test_the_mirror_thread_only_takes_cpu_nothing_else_wants(start_worker, configured):
    """Niceness alone left the projector taking a core from the worker and Redis in a
    drain (a woken worker waited for it): its thread runs under SCHED_IDLE by default
    (MIRROR_IDLE_PRIORITY), the services process's other threads do not."""
    env = {"FLOWJOBS_MIRROR": "true"}
    if configured is not None:
        env["FLOWJOBS_MIRROR_IDLE_PRIORITY"] = configured
    worker = start_worker("fj-echo", env=env)
    services = _services_pid(worker)
    wait_for(lambda: "mirror lease" in worker.output(), timeout=20, message=worker.output)
    if configured is None:
        idle = wait_for(lambda: _idle_threads(services), timeout=10, message=worker.output)
        assert len(idle) == 1 and services not in idle
    else:
        assert _idle_threads(services) == []
    assert _idle_threads(worker.pid) == []


@pytest.mark.chaos
def test_a_mirror_starved_by_a_busy_machine_is_restarted_and_catches_up(start_worker):
    """An idle-priority thread gets almost no CPU while the machine is busy, and cannot
    raise itself again: without the watch the mirror never caught up (its lease lapsed
    batch after batch). Runworker restarts the starved services process; the new one
    catches up at SERVICES_NICENESS while the machine is still busy, and stays there: a
    new process that lowered itself again once caught up starved again, and runworker
    booted a new one every few seconds for as long as the machine was busy."""
    from flowjobs.models import JobRecord

    env = {
        "FLOWJOBS_MIRROR": "true",
        "FLOWJOBS_MIRROR_IDLE_STARVED_S": "1",
        "FLOWJOBS_MIRROR_LOCK_TTL_MS": "3000",
    }
    worker = start_worker("fj-echo", env=env)
    wait_for(lambda: "idle CPU priority" in worker.output(), timeout=30, message=worker.output)
    with cpu_hogs():
        queue = conf.get_queue("fj-echo")
        ids: list[str] = []

        def restarted() -> bool:
            # jobs keep coming, so the mirror always has work it cannot get the CPU for (a
            # trickle is enough to keep its thread runnable; more would only lengthen the
            # catch-up, which runs at a small share of a busy machine's CPU)
            ids.extend(job.id for job in queue.add_bulk([("n", {})] * 5))
            output = worker.output()
            # restarted: the new process is started (the old one may take a while to stop,
            # and meanwhile catch up itself: seen once, the test then looked at the old one)
            return (
                "got almost no CPU" in output
                and output.count("started background services process") >= 2
            )

        wait_for(restarted, timeout=60, interval=0.05, message=worker.output)
        wait_for(
            lambda: (
                JobRecord.objects.filter(queue="fj-echo", job_id__in=ids, state="completed").count()
                == len(ids)
            ),
            timeout=120,
            interval=0.5,
            message=worker.output,
        )
        restarted_as = int(
            re.findall(r"started background services process (\d+)", worker.output())[-1]
        )
        # caught up, with more jobs coming: the new process is not lowered again
        more = [job.id for job in queue.add_bulk([("n", {})] * 5)]
        wait_for(
            lambda: (
                JobRecord.objects.filter(
                    queue="fj-echo", job_id__in=more, state="completed"
                ).count()
                == 5
            ),
            timeout=120,
            interval=0.5,
            message=worker.output,
        )
        idle = _idle_threads(restarted_as)
        assert idle == [], f"services process {restarted_as}: {idle}\n{worker.output()}"
    output = worker.output()
    assert output.count("got almost no CPU") == 1, output
    assert output.count("now runs at idle CPU priority") == 1, output
