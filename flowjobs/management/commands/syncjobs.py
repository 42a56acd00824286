"""``manage.py syncjobs``: run the SQL mirror projector (or one reconcile with --once)."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from flowjobs import mirror
from flowjobs.mirror.repair import ReconcileNotAnswered, reconcile_with_lease
from flowjobs.runner import StopSignals


class Command(BaseCommand):
    help = (
        "Mirror jobs and flows from Redis into the database. Runs until stopped, following "
        "every queue's events stream (one projector per deployment holds a Redis lock; "
        "others stand by). With --once, reconcile every queue from Redis and exit."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--once",
            action="store_true",
            help="scan Redis once, repair the mirror (new, changed and vanished jobs), exit",
        )
        parser.add_argument(
            "--queue",
            action="append",
            dest="queues",
            metavar="NAME",
            help="with --once: only this queue (repeatable)",
        )
        parser.add_argument(
            "--timeout",
            type=float,
            default=900.0,
            metavar="SECONDS",
            help="with --once: how long to wait for the projector holding the mirror's lease "
            "to reconcile (default 900)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if options["once"]:
            # Under the mirror's lease: done here when no projector holds it, else by the
            # holder (a second writer beside it could commit rows older than its own).
            config = mirror.mirror_settings()
            try:
                result, holder = reconcile_with_lease(
                    mirror.redis_client(config.redis_url),
                    config,
                    options["queues"],
                    timeout=options["timeout"],
                )
            except ReconcileNotAnswered as error:
                raise CommandError(f"{error}; try again, or with a longer --timeout") from None
            if holder:
                self.stdout.write(f"reconciled by the projector holding the lease ({holder})")
            for queue, counts in sorted(result.per_queue.items()):
                self.stdout.write(
                    f"{queue}: {counts['upserted']} job(s) mirrored, "
                    f"{counts['marked_missing']} no longer in Redis"
                    + (f", {counts['unstorable']} unstorable" if counts["unstorable"] else ""),
                )
            self.stdout.write(
                self.style.SUCCESS(
                    f"reconciled {result.queues} queue(s): {result.upserted} job(s) mirrored, "
                    f"{result.marked_missing} marked as gone from Redis"
                    + (
                        f", {result.unstorable} unstorable (see the unstorable jobs in the admin)"
                        if result.unstorable
                        else ""
                    )
                )
            )
            return
        signals = StopSignals()
        signals.install()
        config = mirror.mirror_settings()
        self.stdout.write(
            f"mirroring {config.prefix}:* into the database "
            f"(lock {config.lock_key}); Ctrl+C to stop"
        )

        def on_state(state: str) -> None:
            if options["verbosity"] >= 1:
                self.stdout.write(f"mirror: {state}")

        try:
            mirror.run_mirror(signals.event, config=config, on_state=_once_per_change(on_state))
        finally:
            signals.restore()


def _once_per_change(callback: Any) -> Any:
    last: list[str] = []

    def report(state: str) -> None:
        if not last or last[0] != state:
            last[:] = [state]
            callback(state)

    return report
