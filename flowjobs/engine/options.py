"""Job options: validated in Python and encoded the way BullMQ stores them.

Callers use snake_case keyword arguments; the stored `opts` JSON uses
BullMQ's names (camelCase, with the short keys `kl`, `fpof`, `de`, ...), so a
Node.js BullMQ worker reads the same options. Everything is checked before
anything is written.
"""

from __future__ import annotations

import copy
import json
import math
import re
import time
from dataclasses import dataclass, field
from typing import Any

from .errors import InvalidArgument, InvalidJobData, InvalidJobOptions
from .keys import MAX_JOB_ID_LENGTH, QUEUE_KEY_SUFFIXES, text_problem

MAX_PRIORITY = 2_097_151
# JSON (data, options, return values) may nest this deep, both ways: deeper text is
# refused when written and fails its job when read (Python's own recursion limit sits
# not far above, and past it the decoder raises RecursionError).
MAX_JSON_DEPTH = 500
_JSON_STRING_OR_BRACKET = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]')

# snake_case option -> stored BullMQ key
STORED_NAMES: dict[str, str] = {
    "job_id": "jobId",
    "delay": "delay",
    "priority": "priority",
    "lifo": "lifo",
    "attempts": "attempts",
    "backoff": "backoff",
    "remove_on_complete": "removeOnComplete",
    "remove_on_fail": "removeOnFail",
    "keep_logs": "kl",
    "stacktrace_limit": "stackTraceLimit",
    "timestamp": "timestamp",
    "parent": "parent",
    "fail_parent_on_failure": "fpof",
    "continue_parent_on_failure": "cpof",
    "ignore_dependency_on_failure": "idof",
    "remove_dependency_on_failure": "rdof",
    "deduplication": "de",
    "size_limit": "sizeLimit",
    "group": "group",
    "repeat": "repeat",
    "prev_millis": "prevMillis",
    "repeat_job_key": "repeatJobKey",
    "telemetry": "tm",
    # flowjobs: ms a processor may run (enforced for async processors and process
    # isolation); stored verbatim, BullMQ ignores it
    "timeout": "timeout",
}
PARENT_POLICIES = ("fpof", "cpof", "idof", "rdof")


def json_too_deep(text: str) -> bool:
    """True when JSON text nests arrays and objects deeper than MAX_JSON_DEPTH."""
    if text.count("[") + text.count("{") <= MAX_JSON_DEPTH:
        return False  # the common case, at the cost of two C-speed counts
    depth = 0
    for match in _JSON_STRING_OR_BRACKET.finditer(text):
        token = match.group()
        if token in "[{":
            depth += 1
            if depth > MAX_JSON_DEPTH:
                return True
        elif token in "]}":
            depth -= 1
    return False


# json.loads's own C scanner, called directly: json.loads spends as long again around
# it (type checks, two whitespace matches) as the scanner takes for a 200-byte job.
_SCAN = json.JSONDecoder().scan_once


def loads(text: str) -> Any:
    """json.loads within MAX_JSON_DEPTH; raises ValueError (the reason) otherwise."""
    if len(text) > MAX_JSON_DEPTH and json_too_deep(text):  # shorter text cannot be
        raise ValueError(f"nested deeper than {MAX_JSON_DEPTH} levels (MAX_JSON_DEPTH)")
    try:
        try:
            value, end = _SCAN(text, 0)
        except StopIteration:
            end = -1
        if end == len(text):
            return value
        return json.loads(text)  # whitespace around it, or not JSON: json.loads says
    except RecursionError:
        raise ValueError(f"nested deeper than {MAX_JSON_DEPTH} levels (MAX_JSON_DEPTH)") from None


# One encoder for every dumps(): json.dumps with options builds a new one per call.
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _c_encoder() -> Any:
    """The C encoder _ENCODER.encode makes anew on every call (as long as a small value
    takes to encode), made once. Without the circular-reference check, which needs
    state of its own per call: a circular value ends in RecursionError, and then
    _ENCODER, which checks, names the problem."""
    try:
        from json.encoder import c_encode_basestring, c_make_encoder

        return c_make_encoder(
            None, _ENCODER.default, c_encode_basestring, None, ":", ",", False, False, False
        )
    except (ImportError, TypeError):  # another Python, or another signature
        return None


_C_ENCODER = _c_encoder()


def _encode(value: Any) -> str:
    if _C_ENCODER is not None:
        try:
            return "".join(_C_ENCODER(value, 0))
        except RecursionError:
            pass  # circular, or too deep: _ENCODER tells which
    return _ENCODER.encode(value)


_CONTAINERS = (dict, list, tuple)  # a tuple: isinstance with one is faster than with a union


def dumps(value: Any, what: str = "data", *, nested: bool = True) -> str:
    """Compact JSON like JSON.stringify; NaN/Infinity and non-JSON types are refused, and
    so are non-string object keys (JSON would turn 1 into "1", or merge 1 and "1"), and
    nesting deeper than MAX_JSON_DEPTH. `nested=False` is for a value this module built
    itself (str keys, two levels at most): only the checks of its values run."""
    try:
        text = _encode(value)
    except (TypeError, ValueError) as error:
        raise InvalidJobData(f"{what} must be JSON-serialisable: {error}") from None
    except RecursionError:
        text = None
    if text is None or (nested and json_too_deep(text)):
        raise InvalidJobData(
            f"{what} nests deeper than {MAX_JSON_DEPTH} levels (MAX_JSON_DEPTH), "
            "more than a JSON reader is sure to decode"
        )
    if nested and isinstance(value, _CONTAINERS):
        _check_keys(value, what)
    if not text.isascii() and not is_unicode(text):
        raise InvalidJobData(
            f"{what} must be valid Unicode text: it holds surrogate code points "
            "(from bytes decoded with surrogateescape?), which UTF-8 and JSON cannot carry"
        )
    return text


def _check_keys(value: dict | list | tuple, what: str) -> None:
    # runs after json.dumps, which has already refused circular structures
    stack: list[Any] = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            for key, child in item.items():
                if type(key) is not str and not isinstance(key, str):
                    raise InvalidJobData(
                        f"{what} must be JSON: object key {key!r} is a {type(key).__name__}, "
                        "not a string"
                    )
                if isinstance(child, _CONTAINERS):
                    stack.append(child)
        else:
            for child in item:
                if isinstance(child, _CONTAINERS):
                    stack.append(child)


def is_unicode(text: str) -> bool:
    """True unless the text holds lone surrogates (which UTF-8 cannot encode)."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def now_ms() -> int:
    return int(time.time() * 1000)


def _fail(job_name: str, message: str) -> InvalidJobOptions:
    return InvalidJobOptions(f'job "{job_name}": {message}')


def _int(
    job_name: str, option: str, value: Any, minimum: int = 0, maximum: int | None = None
) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _fail(job_name, f"{option} must be an integer, got {value!r}")
    if isinstance(value, float):
        if not math.isfinite(value) or value != int(value):
            raise _fail(job_name, f"{option} must be a whole number, got {value!r}")
        value = int(value)
    if value < minimum or (maximum is not None and value > maximum):
        upper = f"..{maximum:_}" if maximum is not None else " or more"
        raise _fail(job_name, f"{option} must be {minimum}{upper}, got {value!r}")
    return value


def whole_argument(what: str, value: Any, minimum: int, maximum: int | None = None) -> int:
    """A whole-number argument of a public call (a whole float is fine), or
    InvalidArgument naming it."""
    whole = (
        not isinstance(value, bool)
        and isinstance(value, int | float)
        and math.isfinite(value)
        and value == int(value)
    )
    if not whole or value < minimum or (maximum is not None and value > maximum):
        upper = f"..{maximum:_}" if maximum is not None else " or more"
        raise InvalidArgument(f"{what} must be a whole number {minimum}{upper}, got {value!r}")
    return int(value)


def check_keep_jobs(job_name: str, option: str, value: Any) -> Any:
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        return _int(job_name, option, value)
    if isinstance(value, dict):
        unknown = set(value) - {"age", "count", "limit"}
        if unknown:
            raise _fail(
                job_name,
                f"{option} has unknown keys {sorted(unknown)} (age, count, limit)",
            )
        return {k: _int(job_name, f"{option}.{k}", v) for k, v in value.items()}
    raise _fail(
        job_name,
        f"{option} must be True/False, a count or {{age, count}}, got {value!r}",
    )


def _backoff(job_name: str, value: Any) -> dict[str, Any]:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return {"type": "fixed", "delay": _int(job_name, "backoff", value)}
    if not isinstance(value, dict):
        raise _fail(job_name, f"backoff must be ms or {{type, delay, jitter}}, got {value!r}")
    unknown = set(value) - {"type", "delay", "jitter"}
    if unknown:
        raise _fail(
            job_name,
            f"backoff has unknown keys {sorted(unknown)} (type, delay, jitter)",
        )
    kind = value.get("type")
    if not isinstance(kind, str) or not kind:
        raise _fail(job_name, f"backoff.type must be a strategy name, got {kind!r}")
    result: dict[str, Any] = {"type": kind}
    if "delay" in value:
        result["delay"] = _int(job_name, "backoff.delay", value["delay"])
    if "jitter" in value:
        jitter = value["jitter"]
        if isinstance(jitter, bool) or not isinstance(jitter, int | float) or not 0 <= jitter <= 1:
            raise _fail(job_name, f"backoff.jitter must be between 0 and 1, got {jitter!r}")
        result["jitter"] = jitter
    return result


def check_job_id(job_name: str, job_id: Any) -> str:
    if isinstance(job_id, int) and not isinstance(job_id, bool):
        job_id = str(job_id)
    if not isinstance(job_id, str) or not job_id or not is_unicode(job_id):
        raise _fail(job_name, f"job_id must be a non-empty string, got {job_id!r}")
    problem = text_problem(job_id, MAX_JOB_ID_LENGTH)
    if problem:
        raise _fail(job_name, f"job_id {job_id[:80]!r} {problem}")
    if job_id == "0" or job_id.startswith("0:"):
        raise _fail(
            job_name,
            f'job_id "{job_id}" is reserved ("0" and "0:..." mark internal entries)',
        )
    if job_id.isdigit() and str(int(job_id)) == job_id:
        raise _fail(
            job_name,
            f'job_id "{job_id}" looks like an automatic id (a plain integer); use another string',
        )
    if ":" in job_id and len(job_id.split(":")) != 3:
        raise _fail(job_name, f'job_id "{job_id}" contains ":", which breaks the key layout')
    first = job_id.split(":", 1)[0]
    if job_id in QUEUE_KEY_SUFFIXES or (":" in job_id and first in QUEUE_KEY_SUFFIXES - {"repeat"}):
        raise _fail(
            job_name,
            f'job_id "{job_id}" is reserved: <prefix>:<queue>:{job_id} is one of the '
            "queue's own keys",
        )
    return job_id


@dataclass
class EncodedJob:
    """A job ready for the add script."""

    queue_key: str  # <prefix>:<queue>
    name: str
    data_json: str
    opts: dict[str, Any]
    job_id: str = ""
    timestamp: int = 0
    delay: int = 0
    priority: int = 0
    lifo: bool = False
    parent_key: str | None = None
    parent: dict[str, Any] | None = None
    wait_children: bool = False
    repeat_job_key: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def script_args(self) -> list[str]:
        # ts, delay and priority as text: the script stores them as given (Redis 7.0
        # formats a number argument of redis.call with "%.17g", slower than the HSET)
        spec: dict[str, Any] = {
            "qk": self.queue_key,
            "id": self.job_id,
            "name": self.name,
            "ts": str(self.timestamp),
            "delay": str(self.delay),
            "priority": str(self.priority),
            "lifo": self.lifo,
        }
        if self.parent_key:
            spec["parentKey"] = self.parent_key
            spec["parent"] = self.parent
        if self.wait_children:
            spec["waitChildren"] = True
        if self.repeat_job_key:
            spec["rjk"] = self.repeat_job_key
        spec.update(self.extra)
        # opts hold checked values only (those stored as given were checked as JSON)
        options = dumps(self.opts, "options", nested=False)
        return [dumps(spec, "job spec", nested=False), self.data_json, options]


# Options that set the encoded job's own fields (or depend on the job), read at each add
# even when they come from a queue's defaults; every other option is only stored.
_PER_JOB_OPTIONS = frozenset(
    {
        "job_id",
        "delay",
        "priority",
        "lifo",
        "timestamp",
        "parent",
        "deduplication",
        "group",
        "repeat_job_key",
    }
)


@dataclass(frozen=True)
class JobDefaults:
    """A queue's default job options, checked once (`check`) instead of at every add:
    those only stored in a job's opts are kept in their stored form (`stored`, by option
    name); those that set the job's own fields (`per_job`) are read by each add.
    `given` is a copy of the options as checked, to notice a later change."""

    given: dict[str, Any]
    stored: dict[str, Any]
    per_job: dict[str, Any]

    @classmethod
    def check(cls, queue_key: str, prefix: str, options: dict[str, Any]) -> JobDefaults:
        """Checks `options` as one job's (InvalidJobOptions names the problem)."""
        probe = encode_job(queue_key, prefix, "default_job_options", None, options)
        stored: dict[str, Any] = {}
        per_job: dict[str, Any] = {}
        for option, value in options.items():
            if option in _PER_JOB_OPTIONS:
                per_job[option] = value
            elif STORED_NAMES[option] in probe.opts and value is not None:
                stored[option] = probe.opts[STORED_NAMES[option]]
        return cls(copy.deepcopy(options), stored, per_job)

    def current(self, queue_key: str, prefix: str, options: dict[str, Any]) -> JobDefaults:
        """These defaults, or `options` checked anew if they were changed since."""
        return self if options == self.given else JobDefaults.check(queue_key, prefix, options)


def encode_job(
    queue_key: str,
    prefix: str,
    name: Any,
    data: Any,
    options: dict[str, Any],
    defaults: JobDefaults | None = None,
) -> EncodedJob:
    """Validates a job and encodes its options (over the queue's `defaults`); raises
    before anything is written."""
    if not isinstance(name, str) or not name or not is_unicode(name):
        raise InvalidJobOptions(f"job name must be a non-empty string, got {name!r}")
    if options.keys() - STORED_NAMES.keys():
        unknown = sorted(options.keys() - STORED_NAMES.keys())
        raise _fail(
            name,
            f"unknown option(s) {', '.join(unknown)}; known: {', '.join(sorted(STORED_NAMES))}",
        )
    data_json = dumps({} if data is None else data, f'data of job "{name}"')
    stored: dict[str, Any] = {"attempts": 0}
    job = EncodedJob(queue_key=queue_key, name=name, data_json=data_json, opts=stored)
    pending = options
    if defaults is not None:
        for option, value in defaults.stored.items():
            if option not in options:  # an option given, None included, replaces its default
                stored[STORED_NAMES[option]] = dict(value) if type(value) is dict else value
        if defaults.per_job:
            pending = {**defaults.per_job, **options}

    for option, value in pending.items():
        if value is None:
            continue
        key = STORED_NAMES[option]
        match option:
            case "job_id":
                value = job.job_id = check_job_id(name, value)
            case "delay":
                value = job.delay = _int(name, "delay", value)
            case "priority":
                value = job.priority = _int(name, "priority", value, 0, MAX_PRIORITY)
            case "lifo":
                value = job.lifo = bool(value)
            case "attempts":
                value = _int(name, "attempts", value)
            case "backoff":
                value = _backoff(name, value)
            case "remove_on_complete" | "remove_on_fail":
                value = check_keep_jobs(name, option, value)
            case "keep_logs" | "stacktrace_limit" | "size_limit":
                value = _int(name, option, value)
            case "timeout":
                value = _int(name, option, value, 1)
            case "timestamp":
                value = job.timestamp = _int(name, "timestamp", value)
            case "parent":
                value = _parent(name, prefix, value, job)
            case (
                "fail_parent_on_failure"
                | "continue_parent_on_failure"
                | ("ignore_dependency_on_failure")
                | "remove_dependency_on_failure"
            ):
                if not value:
                    continue
                value = True
            case "deduplication":
                value = job.extra["de"] = _deduplication(name, value)
            case "group":
                gid = value.get("id") if isinstance(value, dict) else None
                if not isinstance(gid, str) or not gid or ":" in gid:
                    raise _fail(name, f'group must be {{"id": str without ":"}}, got {value!r}')
                job.extra["gid"] = gid
                dumps(value, f'option group of job "{name}"')
            case "repeat" | "prev_millis" | "telemetry":
                dumps(value, f'option {option} of job "{name}"')  # stored as given
            case "repeat_job_key":
                value = job.repeat_job_key = str(value)
        stored[key] = value

    policies = [p for p in PARENT_POLICIES if stored.get(p)]
    if len(policies) > 1:
        raise _fail(name, "only one child failure policy may be set, got " + ", ".join(policies))
    if policies and job.parent is not None:
        job.parent[policies[0]] = True
    if "de" in stored and job.parent_key:
        raise _fail(name, "deduplication cannot be combined with a parent")
    size_limit = stored.get("sizeLimit")
    if size_limit is not None and len(data_json.encode()) > size_limit:
        raise _fail(
            name,
            f"data is {len(data_json.encode())} bytes, over size_limit {size_limit}",
        )
    if not job.timestamp:
        job.timestamp = now_ms()
    return job


def _parent(job_name: str, prefix: str, value: Any, job: EncodedJob) -> dict[str, str]:
    if not isinstance(value, dict) or not value.get("id") or not value.get("queue"):
        raise _fail(job_name, f'parent must be {{"id": ..., "queue": ...}}, got {value!r}')
    parent_id = str(value["id"])
    queue = str(value["queue"])
    if ":" not in queue:
        queue = f"{prefix}:{queue}"
    job.parent_key = f"{queue}:{parent_id}"
    job.parent = {"id": parent_id, "queueKey": queue}
    return {"id": parent_id, "queue": queue}


def _deduplication(job_name: str, value: Any) -> dict[str, Any]:
    if not isinstance(value, dict) or not isinstance(value.get("id"), str) or not value["id"]:
        raise _fail(job_name, f'deduplication must be {{"id": str, ...}}, got {value!r}')
    unknown = set(value) - {"id", "ttl", "extend", "replace", "keep_last_if_active"}
    if unknown:
        raise _fail(job_name, f"deduplication has unknown keys {sorted(unknown)}")
    result: dict[str, Any] = {"id": value["id"]}
    if value.get("ttl") is not None:
        result["ttl"] = _int(job_name, "deduplication.ttl", value["ttl"], 1)
    for flag, stored in (
        ("extend", "extend"),
        ("replace", "replace"),
        ("keep_last_if_active", "keepLastIfActive"),
    ):
        if value.get(flag):
            result[stored] = True
    return result
