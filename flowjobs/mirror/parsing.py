"""Decoding the text Redis hands the mirror: timestamps, numbers, JSON, ids and keys."""

from __future__ import annotations

import datetime
import json
import math
from typing import Any

from django.conf import settings as django_settings
from django.utils import timezone


def to_datetime(ms: Any) -> datetime.datetime | None:
    try:
        value = int(float(ms))
    except (TypeError, ValueError):
        return None
    if value <= 0:
        return None
    moment = datetime.datetime.fromtimestamp(value / 1000, tz=datetime.UTC)
    if not django_settings.USE_TZ:
        return timezone.make_naive(moment, timezone.get_default_timezone())
    return moment


def to_int(value: Any, default: int = 0) -> int:
    try:
        return int(float(value))
    except (TypeError, ValueError):
        return default


def _reject_constant(name: str) -> Any:
    raise ValueError(f"non-standard JSON constant {name}")


def clean_text(text: str) -> str:
    # PostgreSQL text and jsonb cannot hold NUL characters.
    return text.replace("\x00", "\ufffd") if "\x00" in text else text


# JSON nested deeper than this is kept as raw text: SQLite's JSON functions refuse
# more than 1,000 levels, and no job needs anything close.
MAX_JSON_DEPTH = 500


def shortened(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters, visibly: the last one becomes an ellipsis."""
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def parse_json(raw: str | None) -> tuple[Any, bool]:
    """(value, parsed_ok). Text that is not JSON comes back unchanged with False."""
    if raw is None:
        return None, True
    if "\\u0000" in raw:
        raw = raw.replace("\\u0000", "\\ufffd")
    try:
        value = json.loads(raw, parse_constant=_reject_constant, parse_float=_finite_float)
    except (ValueError, RecursionError):
        return clean_text(raw), False
    if ("\\ud" in raw or "\\uD" in raw) and _has_lone_surrogate(value):
        return clean_text(raw), False
    if raw.count("[") + raw.count("{") > MAX_JSON_DEPTH and _too_deep(value):
        return clean_text(raw), False
    return value, True


def _too_deep(value: Any) -> bool:
    """Whether ``value`` nests deeper than MAX_JSON_DEPTH (walked without recursion)."""
    pending = [(value, 1)]
    while pending:
        current, depth = pending.pop()
        if depth > MAX_JSON_DEPTH:
            return True
        if isinstance(current, dict):
            pending.extend((item, depth + 1) for item in current.values())
        elif isinstance(current, list):
            pending.extend((item, depth + 1) for item in current)
    return False


def _finite_float(text: str) -> float:
    # 1e400 parses as infinity, which no JSON column can hold.
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number out of range: {text}")
    return value


def _has_lone_surrogate(value: Any) -> bool:
    """Whether JSON text escaped half a surrogate pair, which UTF-8 (and jsonb) cannot hold."""
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return True
    except (ValueError, RecursionError):
        return False
    return False


def entry_ms(entry_id: str) -> int:
    return to_int(entry_id.split("-", 1)[0])


def compare_ids(a: str, b: str) -> int:
    a_ms, _, a_seq = a.partition("-")
    b_ms, _, b_seq = b.partition("-")
    left = (to_int(a_ms), to_int(a_seq))
    right = (to_int(b_ms), to_int(b_seq))
    return (left > right) - (left < right)


def split_queue_key(queue_key: str) -> tuple[str, str]:
    """``"<prefix>:<queue>"`` -> (prefix, queue); queue names never contain ':'."""
    prefix, _, queue = queue_key.rpartition(":")
    return prefix, queue


def job_key(prefix: str, queue: str, job_id: str) -> str:
    return f"{prefix}:{queue}:{job_id}"
