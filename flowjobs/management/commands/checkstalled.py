"""manage.py checkstalled: the stalled-job check as its own process."""

from __future__ import annotations

import logging
import signal
import threading
from typing import Any

import redis
from django.core.management.base import BaseCommand, CommandError, CommandParser

from flowjobs import conf
from flowjobs.engine.connection import OutageLog
from flowjobs.management.commands.flowjobs import known_queues
from flowjobs.management.commands.runworker import ensure_logging


class Command(BaseCommand):
    help = (
        "Move jobs whose lock expired back to wait (or to failed after MAX_STALLED_COUNT), "
        "every --interval ms, for the given queues (default: registered queues and every "
        "queue found in Redis). Prints the ids it moved."
    )
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("queues", nargs="*", help="queues to check")
        parser.add_argument(
            "--interval", type=int, help="ms between checks (default: STALLED_INTERVAL)"
        )
        parser.add_argument("--once", action="store_true", help="check once and exit")

    def handle(self, *args: Any, **options: Any) -> None:
        current = conf.settings()
        interval = options["interval"]
        if interval is not None and interval <= 0:
            raise CommandError("--interval must be a positive number of milliseconds")
        stop = threading.Event()
        if not options["once"] and threading.current_thread() is threading.main_thread():
            for number in (signal.SIGTERM, signal.SIGINT):
                signal.signal(number, lambda *_: stop.set())
        fixed = list(options["queues"])
        ensure_logging(options["verbosity"])
        # an outage is one warning and its end one info line, not a line per check
        outage = OutageLog(logging.getLogger("flowjobs.checkstalled"), current.redis_url_masked)
        while True:
            names = fixed or known_queues()
            try:
                moved_any = self._check(names, current, interval)
                outage.back()
            except (redis.RedisError, OSError) as error:
                if options["once"]:
                    raise CommandError(
                        f"cannot reach Redis at {current.redis_url_masked}: {error}"
                    ) from None
                outage.lost(error)
                moved_any = False
            if options["once"]:
                if not moved_any and options["verbosity"] >= 1:
                    self.stdout.write("no stalled jobs")
                return
            wait_ms = interval or current.STALLED_INTERVAL
            if stop.wait(wait_ms / 1000):
                return

    def _check(
        self, names: list[str], current: conf.FlowJobsSettings, interval: int | None
    ) -> bool:
        moved_any = False
        for name in names:
            queue_settings = current.queue(name)
            # The script skips the run when any process checked this queue less than
            # stalled_interval ago (as BullMQ's workers do), so checkers never double up.
            stalled_interval = interval or queue_settings.stalled_interval
            moved = conf.get_queue(name).check_stalled(
                max_stalled_count=queue_settings.max_stalled_count,
                stalled_interval_ms=stalled_interval,
            )
            for job_id in moved:
                moved_any = True
                self.stdout.write(f"{name} {job_id}")
        return moved_any
