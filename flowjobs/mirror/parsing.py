"""Decoding the text Redis hands the mirror: timestamps, numbers, JSON, ids and keys."""

from __future__ import annotations

import datetime
import functools
import json
import math
import re
from typing import Any

from django.conf import settings as django_settings
from django.utils import timezone


def timestamp_ms(ms: Any) -> int | None:
    """A millisecond timestamp as a positive int; None for none, 0 or not a number."""
    if ms is None:  # a field the hash lacks: common, and cheaper than the exception
        return None
    try:
        value = int(float(ms))
    except (TypeError, ValueError):
        return None
    return value if value > 0 else None


def utc_moment(ms: Any) -> datetime.datetime | None:
    """The aware UTC datetime of a millisecond timestamp (see timestamp_ms)."""
    value = timestamp_ms(ms)
    if value is None:
        return None
    return datetime.datetime.fromtimestamp(value / 1000, tz=datetime.UTC)


def to_datetime(ms: Any) -> datetime.datetime | None:
    moment = utc_moment(ms)
    if moment is None:
        return None
    if not django_settings.USE_TZ:
        return timezone.make_naive(moment, timezone.get_default_timezone())
    return moment


def to_int(value: Any, default: int = 0) -> int:
    if value is None:  # a field the hash lacks: common, and cheaper than the exception
        return default
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
    value, ok, _text = _checked_json(raw)
    return value, ok


# A number written with an exponent: PostgreSQL's jsonb keeps it as an exact numeric and
# gives back 1e5 as 100000, which Python then reads as an int instead of a float.
_EXPONENT = re.compile(r"[0-9][eE]")


# Texts most job hashes hold (an empty stacktrace, no progress yet): valid as they are.
_PLAIN_JSON = frozenset(("[]", "{}", "0", "1", "true", "false", '""'))


def json_text(raw: str | None) -> tuple[str | None, bool]:
    """(the text a JSON column stores for ``raw``, parsed_ok), under parse_json's rules.

    Text parse_json accepts is stored as it is (after its \\u0000 replacement): the
    database reads back the value json.dumps of the parsed value would have given,
    without the cost of writing it again. Numbers with an exponent are written again
    (see _EXPONENT); text that is not JSON is stored as a JSON string, as before.
    """
    if raw in _PLAIN_JSON:
        return raw, True
    if raw is not None and len(raw) <= _RECENT_TEXT_LIMIT:
        # a queue's jobs mostly share their options, and a job's data is read again at
        # its later events: short texts checked lately are not checked again
        return _recent_json_text(raw)
    return _json_text(raw)


def _json_text(raw: str | None) -> tuple[str | None, bool]:
    value, ok, text = _checked_json(raw)
    if value is None and ok:
        return None, True  # JSON null is stored as SQL NULL, as the ORM would
    if not ok or _EXPONENT.search(text) is not None:
        return json.dumps(value), ok
    return text, True


_RECENT_TEXT_LIMIT = 1024
_recent_json_text = functools.lru_cache(maxsize=8192)(_json_text)


def _checked_json(raw: str | None) -> tuple[Any, bool, str]:
    """(value, parsed_ok, the text parsed): parse_json's rules, in one place."""
    if raw is None:
        return None, True, ""
    if "\\u0000" in raw:
        raw = raw.replace("\\u0000", "\\ufffd")
    try:
        value = _decode(raw)
    except (ValueError, RecursionError):
        return clean_text(raw), False, raw
    if ("\\ud" in raw or "\\uD" in raw) and _has_lone_surrogate(value):
        return clean_text(raw), False, raw
    if raw.count("[") + raw.count("{") > MAX_JSON_DEPTH and _too_deep(value):
        return clean_text(raw), False, raw
    return value, True, raw


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


_DECODER = json.JSONDecoder(parse_constant=_reject_constant, parse_float=_finite_float)


def _decode(raw: str) -> Any:
    """json.loads's result (or error) for ``raw``, under the mirror's number rules.

    Text that is one JSON value from its first character to its last (what Redis
    holds) goes straight to the scanner, without decode()'s two whitespace matches.
    """
    try:
        value, end = _DECODER.scan_once(raw, 0)
    except StopIteration:
        end = -1  # leading whitespace, or not JSON: decode() says which
    if end != len(raw):
        return _DECODER.decode(raw)
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


def field_value(fields: list[str], name: str) -> str | None:
    """The value of ``name`` in a stream entry's flat [name, value, ...] field list (the
    first one: BullMQ writes each name once)."""
    start = 0
    while True:
        try:
            index = fields.index(name, start)
        except ValueError:
            return None
        if index % 2 == 0:  # a name, not a value that reads the same
            return fields[index + 1] if index + 1 < len(fields) else None
        start = index + 1


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
