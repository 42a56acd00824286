"""Running workers for ``manage.py runworker``: one process, or a supervisor of several.

``WorkerProcess`` runs one engine ``Worker`` per queue in this process (each in its own
thread, jobs dispatched by ``flowjobs.registry``) and watches for the reasons to stop:
a signal, ``--burst`` finding nothing left to do, ``--max-jobs`` / ``--max-memory``,
or a worker dying. ``Supervisor`` starts N such processes as children
(``python -m django runworker --child ...``), restarts the ones that exit, and
forwards SIGTERM.

Background services (``BACKGROUND_SERVICES``: the SQL mirror's projector, and whatever
else a deployment needs running once beside its workers) run in ONE extra process,
``runworker --services``, started and restarted by the runworker that is not a child
(a single ``WorkerProcess`` or the ``Supervisor``): they neither take CPU from the
worker's event loop nor fall behind it. Each service holds its own deployment-wide
lock where it needs one (the mirror does), so any number of runworkers may start them.

Shutdown: the first SIGTERM/SIGINT stops fetching and waits for the active jobs
(at most ``SHUTDOWN_TIMEOUT`` seconds when set), then exits 0. A second signal
stops at once, leaving unfinished jobs to the stalled-job check, and exits 1.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

import redis

from . import conf, registry
from .engine import Worker
from .engine.connection import probe
from .priority import StarvationWatch, allow_idle_threads

__all__ = [
    "EXIT_FATAL",
    "EXIT_OK",
    "EXIT_RECYCLE",
    "RunOptions",
    "Supervisor",
    "WorkerProcess",
    "current_rss_mb",
]

logger = logging.getLogger("flowjobs.worker")
runner_logger = logging.getLogger("flowjobs.runner")

SERVICE_STOP_TIMEOUT_S = 10.0
# A services process that exits is started again after SERVICES_RESTART_FIRST_S, and after
# twice the last pause (up to SERVICES_RESTART_MAX_S) while it keeps exiting within
# SERVICES_STABLE_S of its start.
SERVICES_RESTART_FIRST_S = 1.0
SERVICES_RESTART_MAX_S = 60.0
SERVICES_STABLE_S = 60.0
EXIT_OK = 0
EXIT_FATAL = 1
# A child that stops for --max-jobs/--max-memory says so with this code (EX_TEMPFAIL);
# the supervisor then starts a fresh one even in --burst mode.
EXIT_RECYCLE = 75

POLL_S = 0.1
REDIS_TIMEOUT_S = 5.0


@dataclass
class RunOptions:
    """What ``runworker`` was asked to do (None: use the setting)."""

    queues: list[str]
    concurrency: int | None = None
    lock_duration: int | None = None
    burst: bool = False
    max_jobs: int | None = None
    max_memory_mb: int | None = None
    shutdown_timeout: float | None = None
    worker_name: str | None = None
    child: bool = False
    mirror: bool = True
    pool: str = "thread"
    job_timeout_ms: int | None = None
    extra_argv: list[str] = field(default_factory=list)


class FatalError(Exception):
    """Something that makes starting (or going on) pointless: exit non-zero."""


def current_rss_mb() -> float:
    """Resident memory of this process in MB (peak RSS where /proc is missing)."""
    try:
        with open("/proc/self/statm") as statm:
            pages = int(statm.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / (1024 * 1024)
    except (OSError, ValueError, IndexError):
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def check_redis_at_start(url: str) -> None:
    """Raises FatalError when Redis does not answer (the workers warn about a risky
    eviction policy themselves)."""
    try:
        probe(url, REDIS_TIMEOUT_S)
    except (redis.RedisError, OSError) as error:
        raise FatalError(f"cannot reach Redis at {conf.mask_url(url)}: {error}") from None


def _sync_schedulers(queue: str, declarations: Any) -> None:
    """Makes the queue's job schedulers match FLOWJOBS["QUEUES"][queue]["SCHEDULERS"]
    (idempotent: unchanged ones keep their pending run). Schedulers an earlier sync
    declared and the settings no longer do are removed; others (made in code or by
    Node.js) are never touched."""
    from .engine.schedulers import sync_job_schedulers
    from .scheduler_listing import SETTINGS_OWNER

    report = sync_job_schedulers(
        conf.get_queue(queue), conf.thaw(declarations or {}), owner=SETTINGS_OWNER
    )
    changed = {k: v for k, v in report.items() if v and k not in ("unchanged", "removed")}
    if changed:
        runner_logger.info("job schedulers of %s: %s", queue, changed)
    for scheduler_id in report["removed"]:
        runner_logger.info(
            'job scheduler "%s" of queue %s removed: no longer in FLOWJOBS["QUEUES"]["%s"]'
            '["SCHEDULERS"] (only schedulers the settings declared are removed)',
            scheduler_id,
            queue,
            queue,
        )


def metrics_minutes(current: conf.FlowJobsSettings) -> int | None:
    """FLOWJOBS["METRICS_MINUTES"] (or FLOWJOBS_METRICS_MINUTES, default 60): minutes of
    completed/failed counts per minute the workers keep in BullMQ's metrics keys (the
    dashboard's charts); 0 turns recording off."""
    value = current.extra.get("METRICS_MINUTES", os.environ.get("FLOWJOBS_METRICS_MINUTES", 60))
    try:
        minutes = int(value)
    except (TypeError, ValueError):
        minutes = -1
    if isinstance(value, bool) or minutes < 0:
        raise FatalError(f"METRICS_MINUTES must be an integer >= 0, got {value!r}")
    return minutes or None


def resolve_queues(requested: Sequence[str]) -> list[str]:
    """The queues to work on: the requested ones (each must have a processor), or every
    registered queue. Raises FatalError when there is nothing to run."""
    registered = registry.queue_names()
    if not requested:
        if not registered:
            raise FatalError(
                "no processors are registered: define them with @processor in an app's "
                "jobs.py (and add the app to INSTALLED_APPS), or name the queues to run"
            )
        return registered
    missing = [q for q in requested if q not in registered]
    if missing:
        known = ", ".join(registered) or "none"
        raise FatalError(
            f"no processor registered for queue(s) {', '.join(missing)} (registered: {known})"
        )
    return list(dict.fromkeys(requested))


class StopSignals:
    """SIGTERM/SIGINT handling: the first asks for a graceful stop (`event`), the second
    forces (runworker; the relay and mirror commands stop on the first)."""

    def __init__(self) -> None:
        self.count = 0
        self.event = threading.Event()
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for number in (signal.SIGTERM, signal.SIGINT):
            self._previous[number] = signal.signal(number, self._handle)

    def restore(self) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)
        self._previous.clear()

    def _handle(self, number: int, frame: FrameType | None) -> None:
        self.count += 1
        self.event.set()


def _start_mirror(stop_event: threading.Event) -> threading.Thread | None:
    """Starts flowjobs.mirror's projector thread when that module provides one."""
    try:
        from . import mirror
    except ImportError:
        return None
    start = getattr(mirror, "start_in_worker", None)
    if start is None:
        return None
    return start(stop_event)


def _relay_wanted() -> bool:
    from . import outbox

    return outbox.outbox_settings().relay_in_worker


def _start_outbox_relay(stop_event: threading.Event) -> threading.Thread | None:
    """Starts the outbox relay thread (one active per deployment by its lock; off with
    the OUTBOX_RELAY setting, which flowjobs.outbox reads)."""
    from . import outbox

    return outbox.start_in_worker(stop_event)


@dataclass(frozen=True)
class BackgroundService:
    """Something runworker keeps running once per deployment beside its workers.

    ``start(stop_event)`` starts it in a thread and returns that thread (or None when it
    decides not to run); the service ends soon after ``stop_event`` is set and releases
    what it holds. ``wanted(options, settings)`` says whether this runworker runs it."""

    name: str
    wanted: Callable[[RunOptions, conf.FlowJobsSettings], bool]
    start: Callable[[threading.Event], threading.Thread | None]


BACKGROUND_SERVICES: list[BackgroundService] = [
    BackgroundService(
        "mirror",
        lambda options, current: options.mirror and current.MIRROR,
        _start_mirror,
    ),
    BackgroundService(
        "outbox-relay", lambda options, current: _relay_wanted(), _start_outbox_relay
    ),
]


def wanted_services(options: RunOptions, current: conf.FlowJobsSettings) -> list[str]:
    """Names of the background services this runworker should run (none in a child)."""
    if options.child:
        return []
    return [service.name for service in BACKGROUND_SERVICES if service.wanted(options, current)]


class _RunningServices:
    """Background services running as threads of this process."""

    def __init__(self, names: Sequence[str]) -> None:
        self.stop_event = threading.Event()
        self.threads: list[threading.Thread] = []
        for service in BACKGROUND_SERVICES:
            if service.name in names:
                thread = service.start(self.stop_event)
                if thread is not None:
                    self.threads.append(thread)

    def stop(self) -> None:
        """Stops them and waits, so they release their deployment locks now and another
        runworker takes over at once (not after the locks' TTL)."""
        self.stop_event.set()
        for thread in self.threads:
            thread.join(SERVICE_STOP_TIMEOUT_S)


def child_env() -> dict[str, str]:
    """The environment of a ``runworker`` child: this one, with the settings module and
    this project on the path. Raises FatalError without a settings module."""
    from django.conf import settings as django_settings

    env = dict(os.environ)
    # override_settings hides SETTINGS_MODULE; the environment still has it then.
    module = getattr(django_settings, "SETTINGS_MODULE", None) or env.get("DJANGO_SETTINGS_MODULE")
    if not module:
        raise FatalError(
            "a runworker child process needs a settings module (DJANGO_SETTINGS_MODULE)"
        )
    env["DJANGO_SETTINGS_MODULE"] = module
    paths = [p for p in (sys.path[0], os.getcwd()) if p]
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    return env


def spawn_runworker(argv: list[str], env: dict[str, str], what: str) -> subprocess.Popen:
    """Starts ``python -m django runworker ARGV`` as a child in its own process group:
    a terminal's Ctrl-C reaches the parent only, which then asks each child once (a
    second signal would force the children)."""
    command = [sys.executable, "-m", "django", "runworker", *argv]
    process = subprocess.Popen(command, env=env, process_group=0)
    runner_logger.info("runworker: started %s process %s", what, process.pid)
    return process


class ServicesChild:
    """The parent's side of the ``runworker --services`` process: starts it, restarts it
    when it exits, stops it with the parent. Without a settings module to start a child
    with, the services run as threads of the parent instead (as before)."""

    def __init__(self, names: list[str]) -> None:
        self.names = names
        self.process: subprocess.Popen | None = None
        self.watch: StarvationWatch | None = None
        self.in_process: _RunningServices | None = None
        self.restart_at = 0.0
        self.env: dict[str, str] = {}
        self.spawned_at = 0.0
        self.restart_pause = 0.0  # the last one; 0: the process has not died young
        # False once a process was restarted for starving: the machine is too busy for
        # an idle-priority mirror, and a new one lowered again would starve again
        self.idle_threads = True

    def start(self) -> None:
        if not self.names:
            return
        try:
            self.env = child_env()
        except FatalError as error:
            runner_logger.warning(
                "runworker: %s; running %s in this process", error, ", ".join(self.names)
            )
            self.in_process = _RunningServices(self.names)
            return
        self._spawn()

    def _spawn(self) -> None:
        argv = ["--services", *(f"--service={name}" for name in self.names)]
        if not self.idle_threads:
            argv.append("--no-idle-threads")
        # its parent's pid, named: a parent that died before the child asked for it would
        # otherwise look alive to the child for ever (the child's ppid is then 1 from the start)
        env = {**self.env, SERVICES_PARENT_ENV: str(os.getpid())}
        self.process = spawn_runworker(argv, env, "background services")
        self.spawned_at = time.monotonic()
        self.watch = None
        if "mirror" in self.names and self.idle_threads:
            from .mirror.settings import mirror_settings

            config = mirror_settings()
            if config.idle_priority:  # else no thread of it runs at idle priority
                self.watch = StarvationWatch(self.process.pid, config.idle_starved_s)

    def check(self) -> None:
        """Restarts the services process when it exited (see SERVICES_RESTART_FIRST_S) or
        when its idle-priority mirror thread starved (once: the new one stays at
        SERVICES_NICENESS)."""
        if self.process is None:
            if self.restart_at and time.monotonic() >= self.restart_at:
                self.restart_at = 0.0
                self._spawn()
            return
        code = self.process.poll()
        if code is None:
            if self.watch is not None and self.watch.starved():
                # A starved idle-priority thread cannot be raised again (that needs
                # CAP_SYS_NICE): a new process catches up at SERVICES_NICENESS first.
                runner_logger.warning(
                    "runworker: the mirror in background services process %s got almost no "
                    "CPU for %.0f s (the machine is busy); restarting it to run at "
                    "SERVICES_NICENESS from now on",
                    self.process.pid,
                    self.watch.window,
                )
                self.stop(wait_s=2.0)  # a starved thread would not stop in time anyway
                self.idle_threads = False
                self._spawn()
            return
        died_young = time.monotonic() - self.spawned_at < SERVICES_STABLE_S
        if died_young and self.restart_pause:
            self.restart_pause = min(self.restart_pause * 2, SERVICES_RESTART_MAX_S)
        else:
            self.restart_pause = SERVICES_RESTART_FIRST_S
        runner_logger.warning(
            "runworker: background services process %s exited with status %s; restarting it "
            "in %.1f s",
            self.process.pid,
            code,
            self.restart_pause,
        )
        self.process = None
        self.restart_at = time.monotonic() + self.restart_pause

    def stop(self, wait_s: float = SERVICE_STOP_TIMEOUT_S + 5) -> None:
        if self.in_process is not None:
            self.in_process.stop()
            self.in_process = None
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        try:
            process.wait(wait_s)
        except subprocess.TimeoutExpired:
            runner_logger.warning(
                "runworker: background services process %s did not stop; killing it",
                process.pid,
            )
            process.kill()
            process.wait()


SERVICES_PARENT_ENV = "FLOWJOBS_RUNWORKER_PID"


def run_services(names: list[str], idle_threads: bool = True) -> int:
    """``runworker --services``: runs the named background services until SIGTERM or
    SIGINT, or until the runworker that started this process is gone. ``idle_threads``:
    the mirror may lower its thread to idle CPU priority (MIRROR_IDLE_PRIORITY)."""
    signals = StopSignals()
    signals.install()
    parent = int(os.environ.get(SERVICES_PARENT_ENV) or os.getppid())
    if os.getppid() != parent:
        runner_logger.warning("runworker: parent is gone; not starting background services")
        return EXIT_OK
    # The services (the mirror above all) yield the CPU to the workers: when the machine
    # is busy, processing jobs comes first and the mirror catches up afterwards.
    with contextlib.suppress(OSError):
        os.nice(conf.settings().SERVICES_NICENESS)
    if idle_threads:
        allow_idle_threads()  # the runworker that started this process watches it
    running = _RunningServices(names)
    runner_logger.info(
        "runworker: background services %s (pid %s, niceness %d)",
        ", ".join(names) or "none",
        os.getpid(),
        os.nice(0),
    )
    try:
        while not signals.event.wait(POLL_S * 5):
            if os.getppid() != parent:
                runner_logger.warning("runworker: parent is gone; stopping background services")
                break
    finally:
        running.stop()
        signals.restore()
    return EXIT_OK


class WorkerProcess:
    """Workers for some queues in this process, until a reason to stop."""

    def __init__(self, options: RunOptions) -> None:
        self.options = options
        self.workers: list[Worker] = []
        self.dispatchers: list[registry.Dispatcher] = []
        self.signals = StopSignals()
        self.stop_reason = ""
        self.services = ServicesChild([])
        self._parent_pid = os.getppid()

    # ----------------------------------------------------------------------- running
    def run(self) -> int:
        self.signals.install()
        try:
            try:
                current = conf.settings()
                queues = resolve_queues(self.options.queues)
                check_redis_at_start(current.REDIS_URL)
                # Django, the project and its apps are loaded for good: keep their
                # objects out of the collector's full passes, which would otherwise
                # walk them again and again while jobs allocate
                gc.collect()
                gc.freeze()
                self._start(queues, current)
            except FatalError as error:
                runner_logger.error("runworker: %s", error)
                self._close_workers(force=True)
                return EXIT_FATAL
            self.services = ServicesChild(wanted_services(self.options, current))
            self.services.start()
            code = self._watch()
            return code
        finally:
            self.services.stop()
            self.signals.restore()
            for dispatcher in self.dispatchers:
                dispatcher.close()

    def _start(self, queues: list[str], current: conf.FlowJobsSettings) -> None:
        name = self.options.worker_name or f"{socket.gethostname()}:{os.getpid()}"
        for queue in queues:
            queue_settings = current.queue(queue)
            concurrency = self.options.concurrency or queue_settings.concurrency
            dispatcher = registry.get_dispatcher(queue, concurrency)
            # also with none declared: the ones dropped from the settings must go
            _sync_schedulers(queue, queue_settings.schedulers)
            conf.get_queue(queue).set_events_max_length(queue_settings.events_max_length)
            isolated = self.options.pool == "process"
            worker = Worker(
                queue,
                # an isolated child imports its processor by path and sets Django up itself
                "flowjobs.registry:isolated_dispatch" if isolated else dispatcher.as_processor(),
                isolation=self.options.pool,
                process_initializer="flowjobs.registry:setup_isolated_child" if isolated else None,
                job_timeout_ms=self.options.job_timeout_ms,
                connection=current.REDIS_URL,
                prefix=current.PREFIX,
                concurrency=concurrency,
                lock_duration=self.options.lock_duration or queue_settings.lock_duration,
                stalled_interval=queue_settings.stalled_interval,
                max_stalled_count=queue_settings.max_stalled_count,
                limiter=dict(queue_settings.limiter) if queue_settings.limiter else None,
                metrics_max_data_points=metrics_minutes(current),
                fetch_ahead=queue_settings.fetch_ahead,
                autorun=False,
                name=name,
            )
            from . import signals

            signals.connect_worker(worker)
            self.dispatchers.append(dispatcher)
            self.workers.append(worker)
        for worker in self.workers:
            worker.start()
        runner_logger.info(
            f"flowjobs worker {name} (pid {os.getpid()}): queues {', '.join(queues)} on "
            f"{current.redis_url_masked} prefix {current.PREFIX!r}"
            + (" (burst)" if self.options.burst else "")
        )

    def _watch(self) -> int:
        idle_checks = 0
        while True:
            if self.signals.event.wait(POLL_S):
                return self._shutdown("signal received")
            self.services.check()
            dead = stopped_workers(self.workers)
            if dead:
                names = ", ".join(w.queue.name for w in dead)
                runner_logger.error("worker for queue(s) %s stopped unexpectedly", names)
                self._close_workers(force=True)
                return EXIT_FATAL
            if self.options.child and os.getppid() != self._parent_pid:
                return self._shutdown("supervisor is gone")
            recycle = self._recycle_reason()
            if recycle:
                code = self._shutdown(recycle)
                if code == EXIT_OK and self.options.child:
                    return EXIT_RECYCLE
                return code
            if self.options.burst:
                idle_checks = idle_checks + 1 if self._all_idle() else 0
                # Twice in a row: a job handed from one queue to another (a parent
                # released by its last child) shows up in between.
                if idle_checks >= 2:
                    return self._shutdown("burst: no jobs left")

    def _recycle_reason(self) -> str:
        if self.options.max_jobs:
            done = sum(w.jobs_processed for w in self.workers)
            if done >= self.options.max_jobs:
                return f"processed {done} jobs (--max-jobs {self.options.max_jobs})"
        if self.options.max_memory_mb:
            rss = current_rss_mb()
            if rss >= self.options.max_memory_mb:
                return f"uses {rss:.0f} MB (--max-memory {self.options.max_memory_mb})"
        return ""

    def _all_idle(self) -> bool:
        if any(w.active_count for w in self.workers):
            return False
        try:
            return all(queue_is_drained(w.queue) for w in self.workers)
        except redis.RedisError:
            return False

    # ----------------------------------------------------------------------- stopping
    def _shutdown(self, reason: str) -> int:
        """Graceful stop; a further signal while waiting turns it into a forced one."""
        self.stop_reason = reason
        active = sum(w.active_count for w in self.workers)
        runner_logger.info("runworker: stopping (%s); waiting for %d active job(s)", reason, active)
        timeout = self.options.shutdown_timeout
        if timeout is None:
            timeout = conf.settings().SHUTDOWN_TIMEOUT
        self.signals.event.clear()
        closers = [
            threading.Thread(
                target=w.close,
                kwargs={"timeout": timeout},
                name=f"flowjobs-close-{w.queue.name}",
                daemon=True,
            )
            for w in self.workers
        ]
        for closer in closers:
            closer.start()
        while any(c.is_alive() for c in closers):
            # the count, not the event, says a second signal came: one that came between
            # the line above and the event's clear() left the event unset
            self.signals.event.wait(POLL_S)
            self.signals.event.clear()
            if self.signals.count >= 2:
                return self._force("second signal")
        if any(w.active_count for w in self.workers):
            return self._force("shutdown timeout")
        from . import signals

        if not signals.flush(timeout=30):
            runner_logger.warning("runworker: job signal receivers still busy; not waiting")
        runner_logger.info("runworker: stopped")
        return EXIT_OK

    def _force(self, reason: str) -> int:
        runner_logger.warning("runworker: %s: stopping now, unfinished jobs stay active", reason)
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        # Processor threads cannot be interrupted and the interpreter would wait for them
        # at exit (so would a graceful Worker.close); the jobs they hold keep their
        # locks until lock_duration and are then recovered by the stalled-job check.
        os._exit(EXIT_FATAL)

    def _close_workers(self, force: bool) -> None:
        for worker in self.workers:
            try:
                worker.close(force=force, timeout=5)
            except Exception:  # noqa: BLE001 - stopping anyway
                runner_logger.exception("closing the worker of %s failed", worker.queue.name)


def stopped_workers(workers: Sequence[Any]) -> list[Any]:
    """The workers whose run ended. One still making its first connection (Redis
    unreachable, or silent, as it started) is not among them: it keeps trying and logs
    the outage once; runworker must not stop for it."""
    return [worker for worker in workers if worker.wait_until_closed(0)]


def queue_is_drained(queue: Any) -> bool:
    """No job of ``queue`` can run now: nothing waiting, prioritized, active or delayed
    and due (a paused queue counts as drained: its jobs will not run either)."""
    from .engine.options import now_ms

    keys = queue.keys
    client = queue.client
    pipe = client.pipeline(transaction=False)
    pipe.hexists(keys.meta, "paused")
    pipe.llen(keys.key("wait"))
    pipe.zcard(keys.key("prioritized"))
    pipe.llen(keys.key("active"))
    # Delayed scores are timestamp * 0x1000 + a counter (BullMQ layout).
    pipe.zcount(keys.key("delayed"), 0, (now_ms() + 1) * 0x1000 - 1)
    paused, waiting, prioritized, active, due = pipe.execute()
    if active:
        return False
    if paused:
        return True
    return not (waiting or prioritized or due)


# --------------------------------------------------------------------------- supervisor


@dataclass
class _Child:
    process: subprocess.Popen
    started: float


class Supervisor:
    """Keeps ``processes`` worker processes running (``runworker --processes N``)."""

    def __init__(
        self,
        options: RunOptions,
        processes: int,
        child_argv: list[str],
    ) -> None:
        self.options = options
        self.processes = processes
        self.child_argv = child_argv
        self.children: list[_Child] = []
        self.env: dict[str, str] = {}
        self.signals = StopSignals()
        self.failures = 0

    def _spawn(self) -> _Child:
        process = spawn_runworker(["--child", *self.child_argv], self.env, "worker")
        return _Child(process, time.monotonic())

    def run(self) -> int:
        from django.db import connections

        current = conf.settings()
        try:
            resolve_queues(self.options.queues)
            check_redis_at_start(current.REDIS_URL)
            self.env = child_env()
        except FatalError as error:
            runner_logger.error("runworker: %s", error)
            return EXIT_FATAL
        # Children are fresh interpreters, but nothing of ours should stay open across them.
        connections.close_all()
        self.signals.install()
        services = ServicesChild(wanted_services(self.options, current))
        try:
            services.start()
            self.children = [self._spawn() for _ in range(self.processes)]
            return self._watch(services)
        finally:
            services.stop()
            self.signals.restore()

    def _watch(self, services: ServicesChild) -> int:
        stopping = False
        forced = False
        exit_code = EXIT_OK
        restart_at: list[float] = []
        while self.children or restart_at:
            if self.signals.event.wait(POLL_S):
                self.signals.event.clear()
                if not stopping:
                    stopping = True
                    restart_at.clear()
                    runner_logger.info("runworker: stopping worker processes (signal received)")
                    self._signal_children(signal.SIGTERM)
                elif not forced and self.signals.count >= 2:
                    forced = True
                    runner_logger.warning(
                        "runworker: second signal: forcing worker processes to stop"
                    )
                    self._signal_children(signal.SIGTERM)
            if not stopping:
                services.check()
            now = time.monotonic()
            for child in list(self.children):
                code = child.process.poll()
                if code is None:
                    continue
                self.children.remove(child)
                if stopping:
                    # -SIGTERM: a child still starting up, before its handlers were set.
                    if code not in (EXIT_OK, EXIT_RECYCLE, -signal.SIGTERM) or forced:
                        exit_code = EXIT_FATAL
                    continue
                if self.options.burst and code == EXIT_OK:
                    runner_logger.info("runworker: worker process %s finished", child.process.pid)
                    continue
                self._report_exit(child, code)
                lived = now - child.started
                restart_at.append(now + (0 if lived >= 1 or code == EXIT_RECYCLE else 1))
            for due in sorted(restart_at):
                if due <= now and not stopping:
                    restart_at.remove(due)
                    self.children.append(self._spawn())
        if forced:
            exit_code = EXIT_FATAL
        runner_logger.info("runworker: all worker processes stopped")
        return exit_code

    def _report_exit(self, child: _Child, code: int) -> None:
        pid = child.process.pid
        if code == EXIT_RECYCLE:
            runner_logger.info(
                "runworker: worker process %s recycled itself; starting a new one", pid
            )
        else:
            how = f"killed by signal {-code}" if code < 0 else f"exited with status {code}"
            runner_logger.warning("runworker: worker process %s %s; starting a new one", pid, how)

    def _signal_children(self, number: int) -> None:
        for child in self.children:
            try:
                child.process.send_signal(number)
            except ProcessLookupError:
                pass
