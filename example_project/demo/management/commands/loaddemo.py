"""manage.py loaddemo: add the demo flows and a step job (see example_project/demo)."""

from __future__ import annotations

from typing import Any

import redis
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction

from example_project.demo import flows
from flowjobs import FlowJobsError, conf
from flowjobs.enqueue import enqueue, enqueue_flow


class Command(BaseCommand):
    help = "Add the demo flows: reports, ETL chains, orders (one optional SMS fails), steps, map-reduce."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--count", type=int, default=2, help="flows of each kind (default 2)")
        parser.add_argument("--chunks", type=int, default=8, help="map children per map-reduce")
        parser.add_argument(
            "--pause-ms", type=int, default=1500, help="pause between the step job's steps"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        count = options["count"]
        if count < 1 or options["chunks"] < 1:
            raise CommandError("--count and --chunks must be at least 1")
        added = []
        try:
            # One transaction: with ENQUEUE_ON_COMMIT every flow reaches Redis at the commit.
            with transaction.atomic():
                for number in range(1, count + 1):
                    enqueue_flow(flows.report_flow(number))
                    enqueue_flow(flows.etl_flow(number))
                    # The first order's SMS fails: the order completes all the same.
                    enqueue_flow(flows.order_flow(number, sms_fails=number == 1))
                    enqueue_flow(flows.map_reduce_flow(options["chunks"]))
                    enqueue(
                        "steps",
                        "onboarding",
                        {"user": f"user{number}", "step": 1, "pause_ms": options["pause_ms"]},
                    )
                    added += ["report", "etl", "order", "map-reduce", "step job"]
        except (FlowJobsError, redis.RedisError) as error:
            raise CommandError(f"could not add the demo jobs: {error}") from None
        current = conf.settings()
        self.stdout.write(
            self.style.SUCCESS(
                f"added {len(added)} demo flows/jobs ({count} of each kind) to "
                f"{current.redis_url_masked} prefix {current.PREFIX!r}"
            )
        )
