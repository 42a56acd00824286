"""Dashboard charts: completed and failed jobs per minute over the last hour (BullMQ's
metrics keys, which workers fill when they run with metrics on), and how far the
mirror is behind each queue's events stream."""

from __future__ import annotations

import datetime
from dataclasses import dataclass

import redis

from .engine import Queue

MINUTES = 60


def minute_series(metrics: dict, now_ms: int, minutes: int = MINUTES) -> list[int]:
    """Jobs per minute, oldest first, ending with the current minute, from
    ``Queue.get_metrics``: ``data`` holds whole minutes newest first, up to the minute
    before ``prev_ts``; the minute of ``prev_ts`` is still counting (count - prev_count).
    Minutes after it saw no job (nothing rolled the data over)."""
    meta, data = metrics["meta"], metrics["data"]
    current = now_ms // 60_000
    if not meta["prev_ts"]:
        return [0] * minutes
    last = meta["prev_ts"] // 60_000
    series = []
    for minute in range(current - minutes + 1, current + 1):
        if minute == last:
            series.append(max(0, meta["count"] - meta["prev_count"]))
        elif minute < last and last - 1 - minute < len(data):
            series.append(data[last - 1 - minute])
        else:
            series.append(0)
    return series


@dataclass
class Bar:
    x: int
    completed_height: float
    failed_height: float
    title: str

    @property
    def completed_y(self) -> float:
        return round(CHART_HEIGHT + 1 - self.completed_height, 2)

    @property
    def failed_y(self) -> float:
        return round(self.completed_y - self.failed_height, 2)


@dataclass
class QueueChart:
    queue: str
    completed: list[int]
    failed: list[int]
    recorded: bool  # False: no worker records metrics for this queue
    bars: list[Bar]
    peak: int

    @property
    def completed_total(self) -> int:
        return sum(self.completed)

    @property
    def failed_total(self) -> int:
        return sum(self.failed)


CHART_HEIGHT = 40
BAR_WIDTH = 4


def queue_chart(queue: Queue, now_ms: int) -> QueueChart:
    completed_metrics = queue.get_metrics("completed")
    failed_metrics = queue.get_metrics("failed")
    completed = minute_series(completed_metrics, now_ms)
    failed = minute_series(failed_metrics, now_ms)
    recorded = bool(completed_metrics["meta"]["prev_ts"] or failed_metrics["meta"]["prev_ts"])
    peak = max([done + lost for done, lost in zip(completed, failed, strict=True)] + [1])
    first_minute = now_ms // 60_000 - MINUTES + 1
    bars = []
    for index, (done, lost) in enumerate(zip(completed, failed, strict=True)):
        moment = datetime.datetime.fromtimestamp((first_minute + index) * 60, datetime.UTC)
        bars.append(
            Bar(
                x=index * (BAR_WIDTH + 1),
                completed_height=round(CHART_HEIGHT * done / peak, 2),
                failed_height=round(CHART_HEIGHT * lost / peak, 2),
                title=f"{moment:%H:%M} UTC: {done} completed, {lost} failed",
            )
        )
    return QueueChart(queue.name, completed, failed, recorded, bars, peak)


def mirror_lag_age(
    client: redis.Redis, events_key: str, last_id: str | None, now_ms: int
) -> int | None:
    """Ms since the oldest event the mirror has not applied was written (None: none
    pending, or unknown)."""
    try:
        start = f"({last_id}" if last_id and last_id != "0-0" else "-"
        entries = client.xrange(events_key, min=start, max="+", count=1)
    except redis.ResponseError:
        return None
    if not entries:
        return None
    written = int(str(entries[0][0]).split("-", 1)[0])
    return max(0, now_ms - written)
