"""manage.py flowjobs <queues|schedulers|pause|resume|retry|clean|obliterate>: queue tools."""

from __future__ import annotations

import sys
from typing import Any

import redis
from django.core.management.base import BaseCommand, CommandError, CommandParser

from flowjobs import conf, registry
from flowjobs.engine import FlowJobsError
from flowjobs.mirror.discovery import discover_queues

STATES = ("waiting", "prioritized", "delayed", "active", "waiting-children", "completed", "failed")


def known_queues() -> list[str]:
    """Registered queues plus every queue with a ``meta`` hash or an ``events`` stream under
    the prefix in Redis."""
    current = conf.settings()
    client = conf.get_queue("flowjobs").client
    return sorted(set(registry.queue_names()) | set(discover_queues(client, current.PREFIX)))


class Command(BaseCommand):
    help = "Inspect and manage flowjobs queues."
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: CommandParser) -> None:
        actions = parser.add_subparsers(dest="action", required=True, metavar="action")
        actions.add_parser("queues", help="list queues with job counts per state")
        schedulers = actions.add_parser(
            "schedulers", help="list job schedulers: schedule, next run, declared in"
        )
        schedulers.add_argument("queue", nargs="?", help="only this queue's")
        for action, text in (("pause", "pause a queue"), ("resume", "resume a queue")):
            actions.add_parser(action, help=text).add_argument("queue")
        retry = actions.add_parser("retry", help="move failed (or completed) jobs back to wait")
        retry.add_argument("queue")
        retry.add_argument("--state", choices=("failed", "completed"), default="failed")
        retry.add_argument("--count", type=int, default=1000, help="jobs per script call")
        clean = actions.add_parser("clean", help="remove old jobs of one state")
        clean.add_argument("queue")
        clean.add_argument("--state", choices=STATES, default="completed")
        clean.add_argument("--grace", type=int, default=0, help="keep jobs younger than ms")
        clean.add_argument("--limit", type=int, default=0, help="at most this many (0: all)")
        obliterate = actions.add_parser("obliterate", help="delete a queue and all its jobs")
        obliterate.add_argument("queue")
        obliterate.add_argument("--force", action="store_true", help="even when jobs are active")
        obliterate.add_argument("--yes", action="store_true", help="do not ask for confirmation")

    def handle(self, *args: Any, **options: Any) -> None:
        action = options["action"]
        try:
            getattr(self, f"do_{action}")(options)
        except FlowJobsError as error:
            raise CommandError(str(error)) from None
        except (redis.RedisError, OSError) as error:
            url = conf.settings().redis_url_masked
            raise CommandError(f"Redis error at {url}: {error}") from None

    # ----------------------------------------------------------------------- actions
    def do_queues(self, options: dict[str, Any]) -> None:
        names = known_queues()
        if not names:
            self.stdout.write("no queues")
            return
        header = ["queue", "paused", *STATES]
        rows = [header]
        for name in names:
            queue = conf.get_queue(name)
            counts = queue.get_job_counts(*STATES)
            rows.append(
                [name, "yes" if queue.is_paused() else "no", *(str(counts[s]) for s in STATES)]
            )
        widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
        for row in rows:
            cells = [row[0].ljust(widths[0])] + [
                c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)
            ]
            self.stdout.write("  ".join(cells).rstrip())

    def do_schedulers(self, options: dict[str, Any]) -> None:
        from flowjobs.scheduler_listing import scheduler_rows

        names = [options["queue"]] if options["queue"] else known_queues()
        rows = scheduler_rows(conf.get_queue(name) for name in names)
        if not rows:
            self.stdout.write("no job schedulers")
            return
        table = [["queue", "scheduler", "schedule", "next run (UTC)", "runs", "status", "from"]]
        for row in rows:
            next_run = row.next_run.strftime("%Y-%m-%d %H:%M:%S") if row.next_run else "-"
            table.append(
                [
                    row.queue,
                    row.id,
                    row.schedule,
                    next_run,
                    str(row.scheduler.iteration_count),
                    row.status,
                    row.declared_in,
                ]
            )
        widths = [max(len(line[i]) for line in table) for i in range(len(table[0]))]
        for line in table:
            self.stdout.write(
                "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip()
            )

    def do_pause(self, options: dict[str, Any]) -> None:
        conf.get_queue(options["queue"]).pause()
        self.stdout.write(f"paused {options['queue']}")

    def do_resume(self, options: dict[str, Any]) -> None:
        conf.get_queue(options["queue"]).resume()
        self.stdout.write(f"resumed {options['queue']}")

    def do_retry(self, options: dict[str, Any]) -> None:
        queue = conf.get_queue(options["queue"])
        state = options["state"]
        before = queue.get_job_counts(state)[state]
        queue.retry_jobs(state=state, count=options["count"])
        after = queue.get_job_counts(state)[state]
        self.stdout.write(f"retried {before - after} {state} job(s) of {options['queue']}")

    def do_clean(self, options: dict[str, Any]) -> None:
        if options["grace"] < 0 or options["limit"] < 0:
            raise CommandError("--grace and --limit must be >= 0")
        removed = conf.get_queue(options["queue"]).clean(
            options["grace"], options["limit"], options["state"]
        )
        self.stdout.write(f"removed {len(removed)} {options['state']} job(s) of {options['queue']}")
        if options["verbosity"] >= 2:
            for job_id in removed:
                self.stdout.write(f"  {job_id}")

    def do_obliterate(self, options: dict[str, Any]) -> None:
        name = options["queue"]
        if not options["yes"]:
            self.stdout.write(
                f'This deletes queue "{name}" and all its jobs from Redis. '
                f"Type the queue name to confirm: ",
                ending="",
            )
            self.stdout.flush()
            answer = sys.stdin.readline().strip()
            if answer != name:
                raise CommandError("not confirmed; nothing deleted")
        conf.get_queue(name).obliterate(force=options["force"])
        self.stdout.write(f"obliterated {name}")
