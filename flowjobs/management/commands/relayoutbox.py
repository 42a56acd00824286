"""``manage.py relayoutbox``: push the outbox entries the after-commit pushes left."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from flowjobs import outbox
from flowjobs.runner import StopSignals


class Command(BaseCommand):
    help = (
        "Push outbox entries (jobs and flows enqueued on commit) that are not in Redis yet. "
        "Runs until stopped; one relay per deployment holds a Redis lock, others stand by "
        "(runworker runs one unless OUTBOX_RELAY is off). With --once, push what is there "
        "and exit."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--once",
            action="store_true",
            help="push every entry Redis takes now, print the backlog left, exit "
            "(safe next to a running relay: a push never adds a job twice)",
        )
        parser.add_argument(
            "--database",
            action="append",
            dest="databases",
            metavar="ALIAS",
            help="only this database (repeatable; default: FLOWJOBS OUTBOX_DATABASES)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            relay = outbox.Relay(options["databases"])
        except ValueError as error:
            raise CommandError(str(error)) from None
        if options["once"]:
            pushed = relay.drain()
            for alias in relay.databases:
                count, age = outbox.backlog(alias)
                oldest = f", oldest {age:.0f}s old" if age is not None else ""
                self.stdout.write(f"{alias}: {count} entr(ies) left{oldest}")
            self.stdout.write(self.style.SUCCESS(f"pushed {pushed} outbox entr(ies)"))
            return
        signals = StopSignals()
        signals.install()
        self.stdout.write(
            f"relaying the outbox of {', '.join(relay.databases)} to Redis "
            f"(lock {relay.lock.key}); Ctrl+C to stop"
        )
        try:
            relay.run(signals.event)
        finally:
            signals.restore()
        self.stdout.write(f"relay stopped after pushing {relay.pushed} entr(ies)")
