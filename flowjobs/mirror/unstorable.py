"""Jobs and queues the mirror cannot store: the rule, the record, the one log line.

The rule is the mirror's columns: an identifier (prefix, queue, job id, and the
keys built from them) must fit its column and hold no NUL character, which
PostgreSQL text cannot store. Nothing is ever cut to fit: a job that breaks the
rule becomes an ``UnstorableJob`` row instead of a ``JobRecord``, so that it never
blocks the jobs and queues beside it.
"""

from __future__ import annotations

import datetime
import hashlib
import logging
from collections.abc import Iterable
from typing import Any

from ..models import JobRecord, UnstorableJob

logger = logging.getLogger("flowjobs.mirror")

# JobRecord columns that identify a job or point at one: never shortened.
_IDENTIFIER_COLUMNS = (
    "prefix",
    "queue",
    "job_id",
    "key",
    "parent_key",
    "parent_queue",
    "parent_job_id",
    "root_key",
)
_LIMITS = {column: JobRecord._meta.get_field(column).max_length for column in _IDENTIFIER_COLUMNS}
_LOGGED_ID_CHARS = 200


def text_problem(what: str, value: str, column: str) -> str | None:
    """Why ``value`` cannot be stored in JobRecord ``column`` (None when it can)."""
    if "\x00" in value:
        return f"{what} contains a NUL character"
    limit = _LIMITS[column]
    if len(value) > limit:
        return f"{what} is {len(value)} characters long, over the mirror's {limit}"
    return None


def queue_problem(prefix: str, queue: str) -> str | None:
    """Why a queue's jobs cannot be mirrored at all (None when they can)."""
    return text_problem("the prefix", prefix, "prefix") or text_problem(
        "the queue name", queue, "queue"
    )


def row_problem(row: dict[str, Any]) -> str | None:
    """Why a JobRecord row cannot be stored (None when it can)."""
    for column, limit in _LIMITS.items():
        value = row.get(column)
        # The common case in one test; text_problem says what is wrong otherwise.
        if value and (len(value) > limit or "\x00" in value):
            return text_problem(column.replace("_", " "), value, column)
    return None


def printable(text: str) -> str:
    """``text`` with control characters written as escapes (``\\x00``)."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in text)


def _shown(text: str) -> str:
    shown = printable(text)
    if len(shown) <= _LOGGED_ID_CHARS:
        return shown
    return f"{shown[:_LOGGED_ID_CHARS]}... ({len(text)} characters)"


def _digest(prefix: str, queue: str, job_id: str) -> str:
    raw = "\x00".join((prefix, queue, job_id)).encode("utf-8", "surrogatepass")
    return hashlib.sha256(raw).hexdigest()


def record(entries: Iterable[tuple[str, str, str, str]], now: datetime.datetime) -> int:
    """Record (prefix, queue, job_id, reason) entries; ``job_id`` "" means the whole queue.

    Logs one warning per job the first time it is recorded. Returns how many entries
    were new.
    """
    by_digest = {_digest(p, q, j): (p, q, j, reason) for p, q, j, reason in entries}
    if not by_digest:
        return 0
    known = set(
        UnstorableJob.objects.filter(digest__in=list(by_digest)).values_list("digest", flat=True)
    )
    if known:
        UnstorableJob.objects.filter(digest__in=known).update(last_seen=now)
    new = [
        UnstorableJob(
            digest=digest,
            prefix=printable(prefix),
            queue=printable(queue),
            job_id=printable(job_id),
            reason=reason,
            first_seen=now,
            last_seen=now,
        )
        for digest, (prefix, queue, job_id, reason) in by_digest.items()
        if digest not in known
    ]
    UnstorableJob.objects.bulk_create(new, ignore_conflicts=True)
    for row in new:
        what = f"job {_shown(row.job_id)} of queue" if row.job_id else "queue"
        logger.warning(
            "mirror cannot store %s %s (prefix %s): %s; recorded as unstorable, "
            "the other jobs are mirrored",
            what,
            _shown(row.queue),
            _shown(row.prefix),
            row.reason,
        )
    return len(new)
