"""``manage.py prunejobs``: delete mirrored rows of jobs Redis no longer has, beyond the
history bounds (``FLOWJOBS["MIRROR_HISTORY"]``, or --age / --count)."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from flowjobs import mirror


class Command(BaseCommand):
    help = (
        "Prune the mirror's history: rows of jobs that are no longer in Redis, older than "
        "--age seconds or beyond the newest --count per queue. Defaults come from "
        'FLOWJOBS["MIRROR_HISTORY"]. Rows of jobs still in Redis are never pruned.'
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--age", type=int, help="keep history younger than this (seconds)")
        parser.add_argument("--count", type=int, help="keep at most this many rows per queue")
        parser.add_argument("--dry-run", action="store_true", help="only count what would go")

    def handle(self, *args: Any, **options: Any) -> None:
        config = mirror.mirror_settings()
        age = options["age"] if options["age"] is not None else config.history_age
        count = options["count"] if options["count"] is not None else config.history_count
        if age is None and count is None:
            self.stdout.write(
                'history is unbounded (FLOWJOBS["MIRROR_HISTORY"] unset): nothing to prune'
            )
            return
        if (age is not None and age < 0) or (count is not None and count < 0):
            raise CommandError("--age and --count must be >= 0")
        if options["dry_run"]:
            self.stdout.write(f"would delete {_would_delete(age, count)} row(s)")
            return
        deleted = mirror.prune_history(age=age, count=count)
        self.stdout.write(self.style.SUCCESS(f"deleted {deleted} row(s) of job history"))


def _would_delete(age: int | None, count: int | None) -> int:
    from django.db import transaction

    with transaction.atomic():
        deleted = mirror.prune_history(age=age, count=count)
        transaction.set_rollback(True)
    return deleted
