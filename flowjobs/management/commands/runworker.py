"""manage.py runworker [queue ...]: process jobs with the registered processors."""

from __future__ import annotations

import logging
import sys
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from flowjobs import reloading, runner


def _positive(value: str) -> int:
    number = int(value)
    if number < 1:
        raise ValueError(value)
    return number


def ensure_logging(verbosity: int) -> None:
    """Show flowjobs' INFO lines on stderr unless the project configured a handler;
    ``-v 2`` or more adds the per-job DEBUG lines (started, completed) in any case."""
    flowjobs_logger = logging.getLogger("flowjobs")
    if verbosity >= 2:
        logging.getLogger("flowjobs.worker").setLevel(logging.DEBUG)
    if flowjobs_logger.handlers or logging.getLogger().handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        logging.Formatter("%(asctime)s %(levelname)s %(name)s[%(process)d] %(message)s")
    )
    flowjobs_logger.addHandler(handler)
    flowjobs_logger.setLevel(logging.DEBUG if verbosity >= 2 else logging.INFO)


class Command(BaseCommand):
    help = (
        "Run flowjobs workers for the given queues (default: every queue with a "
        "registered @processor). SIGTERM/SIGINT: finish the active jobs and exit 0; "
        "a second signal: stop at once and exit 1."
    )
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("queues", nargs="*", help="queues to work on")
        parser.add_argument(
            "--concurrency", type=_positive, help="jobs at a time per queue and process"
        )
        parser.add_argument(
            "--processes",
            type=_positive,
            default=1,
            help="worker OS processes under one supervisor (default 1: no supervisor)",
        )
        parser.add_argument(
            "--burst", action="store_true", help="process the jobs there are, then exit 0"
        )
        parser.add_argument("--lock-duration", type=_positive, help="job lock duration (ms)")
        parser.add_argument(
            "--max-jobs", type=_positive, help="exit (or be replaced) after this many jobs"
        )
        parser.add_argument(
            "--max-memory",
            type=_positive,
            help="exit (or be replaced) once resident memory reaches this many MB",
        )
        parser.add_argument(
            "--shutdown-timeout",
            type=float,
            help="seconds to wait for active jobs on shutdown (default: SHUTDOWN_TIMEOUT)",
        )
        parser.add_argument("--worker-name", help="name shown in Redis CLIENT LIST")
        parser.add_argument(
            "--no-mirror",
            action="store_true",
            help="do not run the SQL mirror projector beside this runworker's workers",
        )
        parser.add_argument(
            "--pool",
            choices=("thread", "process"),
            default="thread",
            help="thread (default): processors in this process; process: each in a child "
            "process, so CPU-bound or crashing code cannot stall the worker",
        )
        parser.add_argument(
            "--job-timeout",
            type=_positive,
            help="ms a job may run before it is stopped and failed (process pool, async "
            "processors); a job's own `timeout` option wins",
        )
        parser.add_argument("--child", action="store_true", help="(internal) supervised child")
        # --reload: flowjobs/reloading.py
        parser.add_argument(
            "--reload",
            action="store_true",
            help="development: restart the worker when a Python file changes (Django's "
            "autoreloader); active jobs finish first",
        )
        parser.add_argument(
            "--services",
            action="store_true",
            help="(internal) run the background services (mirror, ...) of a runworker",
        )
        parser.add_argument(
            "--service", action="append", default=[], help="(internal) a service to run"
        )
        parser.add_argument(
            "--no-idle-threads",
            action="store_true",
            help="(internal) with --services: no thread lowers itself to idle CPU priority",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        ensure_logging(options["verbosity"])
        if options["services"]:
            runner.run_services(options["service"], idle_threads=not options["no_idle_threads"])
            return
        # --reload: this process restarts a copy of itself, where the worker runs
        reloader = None
        if options["reload"] and not options["child"]:
            if not reloading.in_reloaded_process():
                sys.exit(reloading.restart_on_change())
            reloader = reloading.WorkerReloader()
        run_options = runner.RunOptions(
            queues=list(options["queues"]),
            concurrency=options["concurrency"],
            lock_duration=options["lock_duration"],
            burst=options["burst"],
            max_jobs=options["max_jobs"],
            max_memory_mb=options["max_memory"],
            shutdown_timeout=options["shutdown_timeout"],
            worker_name=options["worker_name"],
            child=options["child"],
            mirror=not options["no_mirror"],
            pool=options["pool"],
            job_timeout_ms=options["job_timeout"],
        )

        if options["processes"] > 1 and not options["child"]:
            child_argv = [*run_options.queues]
            for flag, key in (
                ("--concurrency", "concurrency"),
                ("--lock-duration", "lock_duration"),
                ("--max-jobs", "max_jobs"),
                ("--max-memory", "max_memory"),
                ("--shutdown-timeout", "shutdown_timeout"),
                ("--worker-name", "worker_name"),
                ("--pool", "pool"),
                ("--job-timeout", "job_timeout"),
            ):
                if options[key] is not None:
                    child_argv += [flag, str(options[key])]
            if options["burst"]:
                child_argv.append("--burst")
            child_argv += ["--verbosity", str(options["verbosity"])]
            code = runner.Supervisor(run_options, options["processes"], child_argv).run()
        else:
            process = runner.WorkerProcess(run_options)
            code = process.run()
        if reloader is not None and reloader.exit_code(code) == reloading.EXIT_RELOAD:
            sys.exit(reloading.EXIT_RELOAD)
        if code not in (runner.EXIT_OK, runner.EXIT_RECYCLE):
            raise CommandError("runworker stopped with an error", returncode=code)
        if code == runner.EXIT_RECYCLE:
            sys.exit(code)
