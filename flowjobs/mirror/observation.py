"""What the mirror learned about one job in one batch, and the row it makes of it."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..models import JobRecord, JobState
from .parsing import (
    clean_text,
    entry_ms,
    field_value,
    job_key,
    json_text,
    parse_json,
    shortened,
    split_queue_key,
    to_int,
)

# The state a job is in after the event, for events that move it.
_STATE_AFTER_EVENT = {
    "waiting": JobState.WAITING,
    "delayed": JobState.DELAYED,
    "waiting-children": JobState.WAITING_CHILDREN,
    "active": JobState.ACTIVE,
    "completed": JobState.COMPLETED,
    "failed": JobState.FAILED,
    "stalled": JobState.WAITING,
}

# `removed` events name the structure the job was taken from.
_STATE_FROM_REMOVED_PREV = {
    "completed": JobState.COMPLETED,
    "failed": JobState.FAILED,
    "delayed": JobState.DELAYED,
    "prioritized": JobState.PRIORITIZED,
    "waiting-children": JobState.WAITING_CHILDREN,
    "wait": JobState.WAITING,
    "paused": JobState.WAITING,
    "active": JobState.ACTIVE,
}

# State structures in the order getState checks them, with how to read them.
STATE_STRUCTURES = (
    ("completed", "zset", JobState.COMPLETED),
    ("failed", "zset", JobState.FAILED),
    ("delayed", "zset", JobState.DELAYED),
    ("prioritized", "zset", JobState.PRIORITIZED),
    ("active", "list", JobState.ACTIVE),
    ("wait", "list", JobState.WAITING),
    ("paused", "list", JobState.WAITING),
    ("waiting-children", "zset", JobState.WAITING_CHILDREN),
)

# Job and worker names are labels, not identifiers: longer ones are shown shortened.
_NAME_LIMIT = JobRecord._meta.get_field("name").max_length
_JSON_FIELDS = ("data", "opts", "returnvalue", "progress", "stacktrace")
# --------------------------------------------------------------------------- observations


@dataclass
class Observation:
    """What the mirror learned about one job in one batch."""

    prefix: str
    queue: str
    job_id: str
    fields: dict[str, str] | None = None  # the job hash; None when Redis no longer has it
    state: str | None = None  # None: keep the stored state
    name: str | None = None
    returnvalue: str | None = None
    failed_reason: str | None = None
    progress: str | None = None
    processed_ms: int | None = None
    finished_ms: int | None = None
    # `waiting` does not say whether the job went to the wait list or to `prioritized`.
    maybe_prioritized: bool = False

    @property
    def key(self) -> str:
        return job_key(self.prefix, self.queue, self.job_id)

    def apply_event(self, event: str, fields: list[str], entry_id: str) -> None:
        """Folds in one event; ``fields`` is the entry's flat [name, value, ...] list."""
        state = _STATE_AFTER_EVENT.get(event)
        if event == "removed":
            state = _STATE_FROM_REMOVED_PREV.get(field_value(fields, "prev") or "")
        if state is not None:
            self.state = state
            # Reprocessing finished jobs always pushes to the wait list, even when prioritized.
            self.maybe_prioritized = event == "waiting" and field_value(fields, "prev") not in (
                "failed",
                "completed",
            )
        if event == "added":
            name = field_value(fields, "name")
            if name is not None:
                self.name = name
        elif event == "active":
            self.processed_ms = entry_ms(entry_id)
            self.finished_ms = None
        elif event == "completed":
            self.returnvalue = field_value(fields, "returnvalue")
            self.finished_ms = entry_ms(entry_id)
        elif event == "failed":
            self.failed_reason = field_value(fields, "failedReason") or ""
            self.finished_ms = entry_ms(entry_id)
        elif event == "progress":
            self.progress = field_value(fields, "data")


def row_from_hash(
    obs: Observation, synced_at: Any, write_datetime: Callable[[Any], Any]
) -> dict[str, Any]:
    """The row of a job whose hash was read, in database values (see ``upsert``)."""
    fields = obs.fields or {}
    get = fields.get
    invalid: list[str] = []
    stored: dict[str, str | None] = {}
    for name in _JSON_FIELDS:
        text, ok = json_text(get(name))
        if not ok:
            invalid.append(name)
        stored[name] = text
    parent_key = get("parentKey", "") or ""
    parent_queue = parent_job_id = ""
    if parent_key:
        parent_value, ok = parse_json(get("parent"))
        if ok and isinstance(parent_value, dict) and parent_value.get("queueKey"):
            parent_queue = split_queue_key(str(parent_value["queueKey"]))[1]
            parent_job_id = str(parent_value.get("id", ""))
        else:
            rest, _, parent_job_id = parent_key.rpartition(":")
            parent_queue = split_queue_key(rest)[1]
    attempts_made = get("atm")
    if attempts_made is None:
        attempts_made = get("attemptsMade")
    key = obs.key
    return dict(
        prefix=obs.prefix,
        queue=obs.queue,
        job_id=obs.job_id,
        key=key,
        name=shortened(clean_text(get("name", obs.name or "")), _NAME_LIMIT),
        state=obs.state or JobState.UNKNOWN,
        parent_key=parent_key,
        parent_queue=parent_queue,
        parent_job_id=parent_job_id,
        root_key=key,
        data=stored["data"],
        opts=stored["opts"],
        returnvalue=stored["returnvalue"],
        progress=stored["progress"],
        failed_reason=clean_text(get("failedReason", "")),
        stacktrace=stored["stacktrace"],
        invalid_json=json.dumps(invalid) if invalid else "[]",
        priority=to_int(get("priority")),
        delay=to_int(get("delay")),
        attempts_made=to_int(attempts_made),
        attempts_started=to_int(get("ats")),
        stalled_counter=to_int(get("stc")),
        processed_by=shortened(clean_text(get("pb", "")), _NAME_LIMIT),
        created_at=write_datetime(get("timestamp")),
        processed_at=write_datetime(get("processedOn")),
        finished_at=write_datetime(get("finishedOn")),
        synced_at=synced_at,
        in_redis=True,
    )


def event_values(
    obs: Observation, invalid_before: list[str], write_datetime: Callable[[Any], Any]
) -> dict[str, Any]:
    """Column values the events carried, for a job whose hash is gone (database values)."""
    values: dict[str, Any] = {}
    invalid = set(invalid_before)
    if obs.state is not None:
        values["state"] = obs.state
    if obs.name is not None:
        values["name"] = shortened(clean_text(obs.name), _NAME_LIMIT)
    for column, raw in (("returnvalue", obs.returnvalue), ("progress", obs.progress)):
        if raw is not None:
            text, ok = json_text(raw)
            values[column] = text
            if ok:
                invalid.discard(column)
            else:
                invalid.add(column)
    if obs.failed_reason is not None:
        values["failed_reason"] = clean_text(obs.failed_reason)
    if obs.processed_ms is not None:
        values["processed_at"] = write_datetime(obs.processed_ms)
    if obs.finished_ms is not None:
        values["finished_at"] = write_datetime(obs.finished_ms)
    values["invalid_json"] = json.dumps(sorted(invalid))
    return values
