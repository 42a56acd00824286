"""The job schedulers of the deployment's queues, as the admin page and
``manage.py flowjobs schedulers`` list them."""

from __future__ import annotations

import datetime
from collections.abc import Iterable
from dataclasses import dataclass

from .engine import Queue
from .engine.schedulers import JobScheduler, owned_job_schedulers

# the owner name under which runworker syncs FLOWJOBS["QUEUES"][...]["SCHEDULERS"]
SETTINGS_OWNER = "settings"


@dataclass
class SchedulerRow:
    queue: str
    scheduler: JobScheduler
    from_settings: bool

    @property
    def id(self) -> str:
        return self.scheduler.id

    @property
    def schedule(self) -> str:
        return schedule_text(self.scheduler)

    @property
    def next_run(self) -> datetime.datetime | None:
        millis = self.scheduler.next_millis
        if self.scheduler.paused or millis is None:
            return None
        return datetime.datetime.fromtimestamp(millis / 1000, datetime.UTC)

    @property
    def status(self) -> str:
        return "paused" if self.scheduler.paused else "active"

    @property
    def declared_in(self) -> str:
        return "settings" if self.from_settings else "code"


def schedule_text(scheduler: JobScheduler) -> str:
    if scheduler.pattern:
        text = f"cron {scheduler.pattern}"
        if scheduler.tz:
            text += f" ({scheduler.tz})"
    else:
        text = f"every {_every(scheduler.every or 0)}"
    if scheduler.limit:
        text += f", {scheduler.iteration_count} of {scheduler.limit} runs"
    return text


def _every(ms: int) -> str:
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("min", 60_000), ("s", 1000)):
        if ms >= size and ms % size == 0:
            return f"{ms // size} {unit}"
    return f"{ms} ms"


def scheduler_rows(queues: Iterable[Queue]) -> list[SchedulerRow]:
    """Every scheduler of the given queues, soonest next run first per queue."""
    rows = []
    for queue in queues:
        owned = set(owned_job_schedulers(queue, SETTINGS_OWNER))
        for scheduler in queue.get_job_schedulers(asc=True):
            rows.append(SchedulerRow(queue.name, scheduler, scheduler.id in owned))
    return rows
