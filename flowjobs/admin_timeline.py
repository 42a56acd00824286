"""A flow's timeline: each job's waiting and running spans on one time axis, and the
critical path (from the top job down, the child that finished last each time: the
branch that held its parent back)."""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field

from django.db.models import Q

from .admin_children import failure_policy
from .models import JobRecord, JobState

ROWS_SHOWN = 200  # jobs drawn; a bigger flow shows its first ones in tree order
_ROWS_READ = 5000

_FINISHED = (JobState.COMPLETED, JobState.FAILED)
# what a row needs (the JSON columns of thousands of jobs would be read for nothing)
_TIMELINE_FIELDS = (
    "key",
    "parent_key",
    "queue",
    "job_id",
    "name",
    "state",
    "created_at",
    "processed_at",
    "finished_at",
    "opts",  # a failed child's failure policy decides whether it holds its parent
)


@dataclass
class TimelineRow:
    record: JobRecord
    depth: int
    wait: tuple[float, float] | None = None  # (left %, width %): created -> started
    run: tuple[float, float] | None = None  # started -> finished (or now)
    open_ended: bool = False  # still waiting or running: the span reaches "now"
    critical: bool = False

    @property
    def indent(self) -> int:
        return min(self.depth, 8) * 12

    @property
    def wait_style(self) -> str:
        return _style(self.wait)

    @property
    def run_style(self) -> str:
        return _style(self.run)

    @property
    def waited(self) -> str:
        return _elapsed(self.record.created_at, self.record.processed_at)

    @property
    def ran(self) -> str:
        return _elapsed(self.record.processed_at, self.record.finished_at)


def _style(span: tuple[float, float] | None) -> str:
    # formatted here, not by the template: a localized decimal comma would break CSS
    return f"left: {span[0]:.3f}%; width: {span[1]:.3f}%" if span else ""


def _elapsed(since: datetime.datetime | None, until: datetime.datetime | None) -> str:
    from .admin_views import format_duration

    if since is None:
        return ""
    until = until or datetime.datetime.now(datetime.UTC)
    return format_duration(max(0, int((until - since).total_seconds() * 1000)))


@dataclass
class Timeline:
    rows: list[TimelineRow] = field(default_factory=list)
    start: datetime.datetime | None = None
    span_ms: int = 0
    total: int = 0
    critical_ms: int = 0

    @property
    def truncated(self) -> bool:
        return self.total > len(self.rows)

    @property
    def ticks(self) -> list[tuple[int, str]]:
        """Labelled marks on the axis: (left %, time since the first job was created)."""
        from .admin_views import format_duration

        return [
            (percent, format_duration(self.span_ms * percent // 100) or "0 ms")
            for percent in (0, 25, 50, 75, 100)
        ]

    @property
    def critical_text(self) -> str:
        from .admin_views import format_duration

        return format_duration(self.critical_ms)


def _flow_rows(top: JobRecord) -> list[JobRecord]:
    root_key = top.root_key or top.key
    return list(
        JobRecord.objects.filter(Q(root_key=root_key) | Q(key=root_key))
        .only(*_TIMELINE_FIELDS)
        .order_by("created_at", "pk")[:_ROWS_READ]
    )


def _end(record: JobRecord, now: datetime.datetime) -> datetime.datetime:
    return record.finished_at if record.state in _FINISHED and record.finished_at else now


def build_timeline(top: JobRecord, now: datetime.datetime | None = None) -> Timeline:
    """The timeline of ``top`` and everything under it (tree order, depth first)."""
    now = now or datetime.datetime.now(datetime.UTC)
    by_parent: dict[str, list[JobRecord]] = {}
    records = _flow_rows(top)
    for record in records:
        if record.parent_key:
            by_parent.setdefault(record.parent_key, []).append(record)
    ordered: list[tuple[JobRecord, int]] = []
    stack = [(top, 0)]
    seen = set()
    while stack:
        record, depth = stack.pop()
        if record.key in seen:
            continue
        seen.add(record.key)
        ordered.append((record, depth))
        stack.extend((child, depth + 1) for child in reversed(by_parent.get(record.key, [])))
    timeline = Timeline(total=len(ordered))
    shown = [(record, depth) for record, depth in ordered[:ROWS_SHOWN] if record.created_at]
    if not shown:
        return timeline
    start = min(record.created_at for record, _ in shown)
    end = max(_end(record, now) for record, _ in shown)
    span = max((end - start).total_seconds(), 0.001)

    def percent(moment: datetime.datetime) -> float:
        return round(100 * max(0.0, (moment - start).total_seconds()) / span, 3)

    critical = _critical_path(top, by_parent, now)
    for record, depth in shown:
        row = TimelineRow(record, depth, critical=record.key in critical)
        started = record.processed_at
        row.open_ended = record.state not in _FINISHED
        waited_until = started or now
        if record.state in _FINISHED and not started:
            waited_until = record.finished_at or now  # failed before it ran (a parent)
        left = percent(record.created_at)
        row.wait = (left, max(0.0, percent(waited_until) - left))
        if started:
            run_left = percent(started)
            row.run = (run_left, max(0.3, percent(_end(record, now)) - run_left))
        timeline.rows.append(row)
    timeline.start = start
    timeline.span_ms = int(span * 1000)
    top_end = _end(top, now)
    timeline.critical_ms = (
        int((top_end - top.created_at).total_seconds() * 1000) if top.created_at else 0
    )
    return timeline


def _held_until(parent: JobRecord, child: JobRecord, now: datetime.datetime) -> datetime.datetime:
    """Until when ``child`` kept ``parent`` waiting: its end, or for good (now) when it
    failed with no failure policy under a parent still waiting for its children."""
    if (
        parent.state == JobState.WAITING_CHILDREN
        and child.state == JobState.FAILED
        and failure_policy(child.opts) is None
    ):
        return now
    return _end(child, now)


def _critical_path(
    top: JobRecord, by_parent: dict[str, list[JobRecord]], now: datetime.datetime
) -> set[str]:
    """Keys on the path from ``top`` through the child that held its parent longest,
    down to a leaf: the jobs that decided when the flow (or subtree) could finish."""
    path = set()
    current: JobRecord | None = top
    while current is not None and current.key not in path:
        path.add(current.key)
        parent, children = current, by_parent.get(current.key)
        current = (
            max(children, key=lambda child: _held_until(parent, child, now)) if children else None
        )
    return path
