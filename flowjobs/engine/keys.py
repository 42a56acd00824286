"""The BullMQ key layout: `<prefix>:<queue>:<suffix>`; a job key is `<prefix>:<queue>:<id>`."""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from redis.exceptions import RedisError, ResponseError

from .errors import ForeignKeyValue, InvalidQueueName

# What flowjobs accepts from its callers (the SQL mirror's columns hold these lengths;
# jobs that Node.js BullMQ wrote are processed whatever their ids look like).
MAX_QUEUE_NAME_LENGTH = 255
MAX_JOB_ID_LENGTH = 255
MAX_PREFIX_LENGTH = 100
_CONTROL_CHARACTER = re.compile(r"[\x00-\x1f\x7f]")

# The events stream's cap (meta `opts.maxLenEvents`) when no client has set it: the
# scripts' default and Node's `streams.events.maxLen` default.
DEFAULT_EVENTS_MAX_LENGTH = 10_000


def events_max_length(meta_value: object) -> int:
    """The events stream's cap from the raw meta `opts.maxLenEvents` (None: not set)."""
    try:
        return int(meta_value)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        return DEFAULT_EVENTS_MAX_LENGTH


# `<prefix>:<queue>:<suffix>` keys of a queue; a job id equal to one would share its key
QUEUE_KEY_SUFFIXES = frozenset(
    {
        "active",
        "cancel",
        "completed",
        "de",
        "delay",
        "delayed",
        "dn",
        "events",
        "failed",
        "group",
        "groups",
        "id",
        "limiter",
        "marker",
        "meta",
        "metrics",
        "paused",
        "pc",
        "prioritized",
        "repeat",
        "stalled",
        "stalled-check",
        "wait",
        "waiting-children",
    }
)


def text_problem(value: str, max_length: int) -> str | None:
    """Why a name or id is refused: too long, or holding a control character (NUL,
    newline, ...) that breaks logs, SQL text columns and admin URLs."""
    if len(value) > max_length:
        return f"is {len(value):_} characters long, over the limit of {max_length}"
    found = _CONTROL_CHARACTER.search(value)
    if found:
        return f"contains the control character {found.group()!r} at position {found.start()}"
    return None


def check_name(what: str, value: str, max_length: int = MAX_QUEUE_NAME_LENGTH) -> None:
    if not isinstance(value, str) or not value or not _is_unicode(value):
        raise InvalidQueueName(f"{what} must be a non-empty string, got {value!r}")
    problem = text_problem(value, max_length)
    if problem:
        raise InvalidQueueName(f"{what} {value[:80]!r} {problem}")
    if ":" in value:
        raise InvalidQueueName(
            f'{what} "{value}" contains ":", which breaks the BullMQ key layout '
            "(<prefix>:<queue>:<job id>); choose a name without colons"
        )


def _is_unicode(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False  # lone surrogates: not encodable as a key
    return True


@dataclass(frozen=True, slots=True)
class QueueKeys:
    prefix: str
    name: str

    def __post_init__(self) -> None:
        check_name("prefix", self.prefix, MAX_PREFIX_LENGTH)
        check_name("queue name", self.name, MAX_QUEUE_NAME_LENGTH)

    @property
    def qualified(self) -> str:
        """`<prefix>:<queue>`: what BullMQ calls the queue key (parent `queueKey`)."""
        return f"{self.prefix}:{self.name}"

    def key(self, suffix: str) -> str:
        return f"{self.prefix}:{self.name}:{suffix}"

    def job(self, job_id: str) -> str:
        return f"{self.prefix}:{self.name}:{job_id}"

    @property
    def meta(self) -> str:
        return self.key("meta")

    @property
    def events(self) -> str:
        return self.key("events")

    @property
    def marker(self) -> str:
        return self.key("marker")


# What TYPE says of a job's own keys beside its hash (its children by outcome, its logs).
JOB_KEY_TYPES = {
    "processed": "hash",
    "dependencies": "set",
    "failed": "hash",
    "unsuccessful": "zset",
    "logs": "list",
}


# What TYPE says of each of a queue's own keys that its scripts write (BullMQ's layout).
QUEUE_KEY_TYPES = {
    "meta": "hash",
    "id": "string",
    "pc": "string",
    "wait": "list",
    "paused": "list",  # BullMQ 5's, drained into wait by a resume
    "active": "list",
    "prioritized": "zset",
    "delayed": "zset",
    "waiting-children": "zset",
    "completed": "zset",
    "failed": "zset",
    "marker": "zset",
    "stalled": "set",
    "events": "stream",
    "repeat": "zset",
    "groups:ready": "zset",
    "groups:maxed": "set",
    "groups:limited": "zset",
}


def is_wrong_type(reply: Any) -> bool:
    """Whether a reply is Redis's refusal of a key holding another kind of value (as
    such, or as redis-py words it for a pipeline: "Command # 2 (...) caused error: ...")."""
    if not isinstance(reply, ResponseError):
        return False
    text = str(reply)
    return text.startswith("WRONGTYPE") or "of pipeline caused error: WRONGTYPE" in text


def is_foreign_refusal(error: Any) -> bool:
    """Whether `error` is a script's refusal because a key held another client's value:
    the scripts' own words ("flowjobs: <key> holds a ..."), or Redis's WRONGTYPE."""
    if not isinstance(error, ResponseError):
        return False
    text = str(error)
    return (text.startswith("flowjobs: ") and " holds a " in text) or is_wrong_type(error)


def foreign_value_error(
    client: Any,
    queues: Iterable[str],
    error: BaseException,
    doing: str = "",
    outcome: str = "",
    also: Mapping[str, str] | None = None,
) -> ForeignKeyValue | None:
    """A refusal because one of `queues`' own keys (or of the keys `also` maps to what
    TYPE says of the right value) held another client's value, as `ForeignKeyValue`: the
    scripts' own words ("flowjobs: <key> holds a ...", without Redis's script suffix), or
    for Redis's WRONGTYPE, which names no key, the keys that hold such a value, looked up
    now (one round trip). None for any other error, or when no such key is found or the
    lookup fails. `doing` goes before the keys ("add: "), `outcome` after them ("; job ...
    not added")."""
    if not is_foreign_refusal(error):
        return None
    text = str(error)
    if not is_wrong_type(error):  # the script's own words, which name the key
        return ForeignKeyValue(doing + text[len("flowjobs: ") :].split(" script: ", 1)[0])
    expected = {
        f"{qualified}:{suffix}": kind
        for qualified in queues
        for suffix, kind in QUEUE_KEY_TYPES.items()
    }
    expected.update(also or {})
    try:
        found = _foreign_values(client, expected)
    except RedisError:
        return None
    if not found:
        return None
    return ForeignKeyValue(
        f"{doing}{'; '.join(found)} (another client's value){outcome}: delete or rename that key"
    )


def raise_foreign_value(
    client: Any, queues: Iterable[str], error: BaseException, *more: Any, **named: Any
) -> None:
    """Raises the `ForeignKeyValue` that `error` stands for (`foreign_value_error` with the
    same arguments), from `error`; returns when it stands for none (the caller raises
    `error` then)."""
    described = foreign_value_error(client, queues, error, *more, **named)
    if described is not None:
        raise described from error


def naming_foreign_values(method: Callable[..., Any]) -> Callable[..., Any]:
    """A Queue's or a Job's method whose refusal because one of its keys holds another
    client's value (Redis's WRONGTYPE, or a script's own words) is raised as
    `ForeignKeyValue` naming the key, after the method's name. The object's
    `_keys_to_name()` gives the client, the queues and any other keys to look at."""
    doing = f"{method.__name__}: "

    @functools.wraps(method)
    def named(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except ForeignKeyValue:
            raise
        except ResponseError as error:
            client, queues, also = self._keys_to_name()
            raise_foreign_value(client, queues, error, doing, also=also)
            raise

    return named


def _foreign_values(client: Any, expected: Mapping[str, str]) -> list[str]:
    """Which of the keys `expected` maps to what TYPE says of the right value hold another
    kind of value, as "<key> holds a <type>, not a <type>"."""
    pipe = client.pipeline(transaction=False)
    for key in expected:
        pipe.type(key)
    found = []
    for (key, kind), held in zip(expected.items(), pipe.execute(), strict=True):
        held = held.decode() if isinstance(held, bytes) else str(held)
        if held not in (kind, "none"):
            found.append(f"{key} holds a {held}, not a {kind}")
    return found


def split_queue_key(qualified: str) -> tuple[str, str]:
    """`<prefix>:<queue>` -> (prefix, queue); the queue is the last part."""
    prefix, _, name = qualified.rpartition(":")
    return prefix, name


def split_job_key(job_key: str) -> tuple[str, str, str]:
    """`<prefix>:<queue>:<id>` -> (prefix, queue, id). Prefixes and queue names have no
    colons; ids may (scheduler iterations are `repeat:<scheduler>:<ms>`)."""
    prefix, name, job_id = (job_key.split(":", 2) + ["", ""])[:3]
    if not job_id:
        raise ValueError(f"not a job key: {job_key!r}")
    return prefix, name, job_id
