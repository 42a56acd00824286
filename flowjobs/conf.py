"""flowjobs settings: the ``FLOWJOBS`` dict in Django settings, with environment fallbacks.

Every key may be set in ``settings.FLOWJOBS``; a key missing there is read from the
environment variable ``FLOWJOBS_<KEY>`` (parsed with django-environ: integers,
booleans, JSON for dicts), then falls back to its default. ``settings()`` returns a
frozen, validated snapshot; it is rebuilt when Django's ``setting_changed`` fires for
``FLOWJOBS`` (``override_settings`` in tests) or when ``reset()`` is called.

The same rules feed the system checks (``flowjobs.checks``): a problem found here is
an ``flowjobs.E0xx`` error there, and ``settings()`` raises ``ImproperlyConfigured``
with the same message.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit

import environ
from django.conf import settings as django_settings
from django.core.exceptions import ImproperlyConfigured

from .engine import FlowJobsError, FlowProducer, Queue
from .engine.connection import CLUSTER_SCHEMES, SENTINEL_SCHEMES, describe

__all__ = [
    "DEFAULTS",
    "FlowJobsSettings",
    "Problem",
    "QueueSettings",
    "connect_signals",
    "get_flow_producer",
    "get_queue",
    "mask_url",
    "problems",
    "reset",
    "settings",
    "thaw",
]

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"

# name -> (kind, default). Kinds drive both environment parsing and validation.
_SPEC: dict[str, tuple[str, Any]] = {
    "REDIS_URL": ("url", DEFAULT_REDIS_URL),
    "PREFIX": ("prefix", "bull"),
    "CONCURRENCY": ("positive_int", 1),
    "LOCK_DURATION": ("duration", 30_000),
    "STALLED_INTERVAL": ("duration", 30_000),
    "MAX_STALLED_COUNT": ("count", 1),
    "DEFAULT_JOB_OPTIONS": (
        "job_options",
        {
            "remove_on_complete": {"age": 24 * 3600, "count": 1000},
            "remove_on_fail": {"age": 7 * 24 * 3600},
        },
    ),
    "ENQUEUE_ON_COMMIT": ("bool", False),
    "QUEUES": ("queues", {}),
    "MIRROR": ("bool", True),
    "CHECK_REDIS": ("bool", True),
    "SHUTDOWN_TIMEOUT": ("optional_seconds", None),
    "SERVICES_NICENESS": ("count", 10),
    "EVENTS_MAX_LENGTH": ("positive_int", 100_000),
    "FETCH_AHEAD": ("bool", True),
}
DEFAULTS: Mapping[str, Any] = MappingProxyType({k: v[1] for k, v in _SPEC.items()})

# Keys owned by flowjobs.mirror, flowjobs.views and flowjobs.outbox (validated there).
_FOREIGN_PREFIXES = ("MIRROR_", "METRICS_", "OUTBOX_")

# What a QUEUES entry may override, and the kind of each.
_QUEUE_SPEC: dict[str, str] = {
    "CONCURRENCY": "positive_int",
    "LOCK_DURATION": "duration",
    "STALLED_INTERVAL": "duration",
    "MAX_STALLED_COUNT": "count",
    "DEFAULT_JOB_OPTIONS": "job_options",
    "LIMITER": "limiter",
    "SCHEDULERS": "schedulers",
    "EVENTS_MAX_LENGTH": "positive_int",
    "FETCH_AHEAD": "bool",
}

# plain, TLS, socket, and the engine's multi-host forms (redis+sentinel://h:p,h:p/service/db,
# redis+cluster://h:p,h:p)
_MULTI_HOST_SCHEMES = (*SENTINEL_SCHEMES, *CLUSTER_SCHEMES)
_URL_SCHEMES = ("redis", "rediss", "unix", *_MULTI_HOST_SCHEMES)


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the settings; ``id`` is the system check id."""

    id: str
    message: str
    hint: str = ""


@dataclass(frozen=True)
class QueueSettings:
    """The effective worker settings of one queue (global values + its QUEUES entry)."""

    name: str
    concurrency: int
    lock_duration: int
    stalled_interval: int
    max_stalled_count: int
    default_job_options: Mapping[str, Any]
    events_max_length: int
    limiter: Mapping[str, int] | None = None
    schedulers: Mapping[str, Any] | None = None
    fetch_ahead: bool = True


@dataclass(frozen=True, eq=False)
class FlowJobsSettings:
    """A validated snapshot of ``FLOWJOBS`` (attribute names are the setting names)."""

    REDIS_URL: str
    PREFIX: str
    CONCURRENCY: int
    LOCK_DURATION: int
    STALLED_INTERVAL: int
    MAX_STALLED_COUNT: int
    DEFAULT_JOB_OPTIONS: Mapping[str, Any]
    ENQUEUE_ON_COMMIT: bool
    QUEUES: Mapping[str, Mapping[str, Any]]
    MIRROR: bool
    CHECK_REDIS: bool
    SHUTDOWN_TIMEOUT: float | None
    SERVICES_NICENESS: int
    EVENTS_MAX_LENGTH: int
    FETCH_AHEAD: bool
    extra: Mapping[str, Any] = field(default_factory=dict)

    def queue(self, name: str) -> QueueSettings:
        """Settings for queue ``name``: its ``QUEUES`` overrides on top of the globals."""
        own = self.QUEUES.get(name, {})
        options = {**self.DEFAULT_JOB_OPTIONS, **own.get("DEFAULT_JOB_OPTIONS", {})}
        limiter = own.get("LIMITER")
        return QueueSettings(
            name=name,
            concurrency=own.get("CONCURRENCY", self.CONCURRENCY),
            lock_duration=own.get("LOCK_DURATION", self.LOCK_DURATION),
            stalled_interval=own.get("STALLED_INTERVAL", self.STALLED_INTERVAL),
            max_stalled_count=own.get("MAX_STALLED_COUNT", self.MAX_STALLED_COUNT),
            default_job_options=MappingProxyType(options),
            limiter=MappingProxyType(dict(limiter)) if limiter else None,
            schedulers=own.get("SCHEDULERS"),
            events_max_length=own.get("EVENTS_MAX_LENGTH", self.EVENTS_MAX_LENGTH),
            fetch_ahead=own.get("FETCH_AHEAD", self.FETCH_AHEAD),
        )

    @property
    def redis_url_masked(self) -> str:
        return mask_url(self.REDIS_URL)


# --------------------------------------------------------------------------- reading


_env = environ.Env()


def _from_env(name: str, kind: str) -> Any:
    """The value of FLOWJOBS_<name> parsed for ``kind``; raises ValueError when unparsable."""
    var = f"FLOWJOBS_{name}"
    text = _env.str(var)
    if kind in ("positive_int", "duration", "count"):
        try:
            return int(text)
        except ValueError:
            raise ValueError(f"{var}={text!r} is not an integer") from None
    if kind == "optional_seconds":
        if text.strip().lower() in ("", "none"):
            return None
        try:
            return float(text)
        except ValueError:
            raise ValueError(f"{var}={text!r} is not a number of seconds") from None
    if kind == "bool":
        lowered = text.strip().lower()
        if lowered not in environ.Env.BOOLEAN_TRUE_STRINGS + (
            "false",
            "0",
            "no",
            "off",
            "",
        ):
            raise ValueError(f"{var}={text!r} is not a boolean (true/false, 1/0, on/off)")
        return _env.bool(var)
    if kind in ("job_options", "queues"):
        try:
            return _env.json(var)
        except ValueError:
            raise ValueError(f"{var} is not valid JSON: {text!r}") from None
    return text


def _collect() -> tuple[dict[str, Any], dict[str, str], list[Problem]]:
    """Raw values (dict first, then env, then default), where each came from, problems."""
    configured = getattr(django_settings, "FLOWJOBS", None)
    found: list[Problem] = []
    if configured is None:
        configured = {}
    elif not isinstance(configured, Mapping):
        found.append(
            Problem(
                "flowjobs.E001",
                f"settings.FLOWJOBS must be a dict, got {type(configured).__name__}",
            )
        )
        configured = {}
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for name, (kind, default) in _SPEC.items():
        if name in configured:
            values[name], sources[name] = configured[name], f'FLOWJOBS["{name}"]'
            continue
        if _env.str(f"FLOWJOBS_{name}", default=None) is not None:
            try:
                values[name] = _from_env(name, kind)
            except ValueError as error:
                found.append(Problem(_ID_FOR_KIND[kind], str(error)))
                values[name] = default
            sources[name] = f"FLOWJOBS_{name}"
            continue
        values[name], sources[name] = default, "default"
    unknown = sorted(
        key for key in configured if key not in _SPEC and not str(key).startswith(_FOREIGN_PREFIXES)
    )
    if unknown:
        found.append(
            Problem(
                "flowjobs.E001",
                f"unknown FLOWJOBS setting(s): {', '.join(map(str, unknown))}",
                hint=f"Known settings: {', '.join(_SPEC)} (and MIRROR_* for the mirror).",
            )
        )
    values["extra"] = {k: v for k, v in configured.items() if str(k).startswith(_FOREIGN_PREFIXES)}
    return values, sources, found


# --------------------------------------------------------------------------- validating

_ID_FOR_KIND = {
    "url": "flowjobs.E002",
    "prefix": "flowjobs.E003",
    "positive_int": "flowjobs.E004",
    "duration": "flowjobs.E005",
    "count": "flowjobs.E005",
    "optional_seconds": "flowjobs.E005",
    "job_options": "flowjobs.E006",
    "bool": "flowjobs.E007",
    "queues": "flowjobs.E008",
    "limiter": "flowjobs.E008",
}


def as_bool(name: str, value: Any) -> bool:
    """A boolean setting given as a bool or as text (true/false, 1/0, yes/no, on/off)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("1", "true", "yes", "on"):
        return True
    if isinstance(value, str) and value.strip().lower() in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{name} must be True or False, got {value!r}")


def mask_url(url: str) -> str:
    """``url`` with any password replaced by ``***`` (safe for logs and messages); the
    engine's rule, which also knows the Sentinel/Cluster forms and query passwords."""
    return describe(url)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_value(label: str, kind: str, value: Any) -> str | None:
    """A message when ``value`` is not valid for ``kind``; None when it is."""
    if kind == "url":
        if not isinstance(value, str) or not value:
            return f"{label} must be a Redis URL string, got {value!r}"
        try:
            parts = urlsplit(value)
            if parts.scheme not in _MULTI_HOST_SCHEMES:
                parts.port  # noqa: B018 - raises ValueError on a bad port
        except ValueError as error:
            return f"{label} {mask_url(value)!r} is not a valid URL: {error}"
        if parts.scheme not in _URL_SCHEMES:
            return (
                f"{label} {mask_url(value)!r} has scheme {parts.scheme!r}; "
                f"expected one of {', '.join(s + '://' for s in _URL_SCHEMES)}"
            )
        if parts.scheme == "unix" and not parts.path:
            return f"{label} {mask_url(value)!r} names no socket path"
        if parts.scheme != "unix" and not parts.netloc.rpartition("@")[2]:
            return f"{label} {mask_url(value)!r} names no host"
        return None
    if kind == "prefix":
        if not isinstance(value, str) or not value:
            return f"{label} must be a non-empty string, got {value!r}"
        if ":" in value:
            return (
                f"{label} {value!r} contains ':', which breaks the BullMQ key layout "
                "<prefix>:<queue>:<job id>; use e.g. 'bull', or a hash tag such as "
                "'{bull}' for Redis Cluster"
            )
        return None
    if kind == "positive_int":
        if not _is_int(value) or value < 1:
            return f"{label} must be a positive integer, got {value!r}"
        return None
    if kind == "duration":
        if not _is_int(value) or value <= 0:
            return f"{label} must be a positive number of milliseconds, got {value!r}"
        return None
    if kind == "count":
        if not _is_int(value) or value < 0:
            return f"{label} must be an integer >= 0, got {value!r}"
        return None
    if kind == "optional_seconds":
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            return f"{label} must be None or a number of seconds >= 0, got {value!r}"
        return None
    if kind == "bool":
        if not isinstance(value, bool):
            return f"{label} must be True or False, got {value!r}"
        return None
    if kind == "job_options":
        if not isinstance(value, Mapping):
            return f"{label} must be a dict of job options, got {value!r}"
        try:
            # Validation only: encode() checks every option and writes nothing.
            Queue("settings-check", connection=DEFAULT_REDIS_URL).encode(
                "settings-check", None, **dict(value)
            )
        except FlowJobsError as error:
            return f"{label} is not valid: {error}"
        return None
    if kind == "limiter":
        if (
            not isinstance(value, Mapping)
            or set(value) != {"max", "duration"}
            or not all(_is_int(v) and v > 0 for v in value.values())
        ):
            return f'{label} must be {{"max": n, "duration": ms}} with positive ints, got {value!r}'
        return None
    raise AssertionError(kind)


def _check_queues(label: str, value: Any) -> list[Problem]:
    if not isinstance(value, Mapping):
        return [Problem("flowjobs.E008", f"{label} must be a dict of queue name -> dict")]
    found = []
    for queue, overrides in value.items():
        where = f"{label}[{queue!r}]"
        if not isinstance(queue, str) or not queue or ":" in queue:
            found.append(Problem("flowjobs.E008", f"{where}: queue names are non-empty, no ':'"))
            continue
        if not isinstance(overrides, Mapping):
            found.append(Problem("flowjobs.E008", f"{where} must be a dict, got {overrides!r}"))
            continue
        unknown = sorted(set(overrides) - set(_QUEUE_SPEC))
        if unknown:
            found.append(
                Problem(
                    "flowjobs.E008",
                    f"{where}: unknown key(s) {', '.join(map(str, unknown))}",
                    hint=f"A queue may override: {', '.join(_QUEUE_SPEC)}.",
                )
            )
        if "SCHEDULERS" in overrides:
            message = _check_schedulers(f'{where}["SCHEDULERS"]', queue, overrides["SCHEDULERS"])
            if message:
                found.append(Problem("flowjobs.E009", message))
        for key, kind in _QUEUE_SPEC.items():
            if key in overrides and kind != "schedulers":
                message = _check_value(f'{where}["{key}"]', kind, overrides[key])
                if message:
                    found.append(Problem(_ID_FOR_KIND[kind], message))
    return found


def _check_schedulers(label: str, queue: str, value: Any) -> str | None:
    from .engine.schedulers import check_job_schedulers

    if not isinstance(value, Mapping | list | tuple):
        return f"{label} must be a dict of scheduler id -> declaration, got {value!r}"
    try:
        check_job_schedulers(Queue(queue, connection=DEFAULT_REDIS_URL), value)
    except FlowJobsError as error:
        return f"{label} is not valid: {error}"
    return None


def _validate(values: dict[str, Any], sources: dict[str, str]) -> list[Problem]:
    found: list[Problem] = []
    for name, (kind, _default) in _SPEC.items():
        label = sources.get(name, name)
        if kind == "queues":
            found.extend(_check_queues(label, values[name]))
            continue
        message = _check_value(label, kind, values[name])
        if message:
            found.append(Problem(_ID_FOR_KIND[kind], message))
    return found


def problems() -> list[Problem]:
    """Everything wrong with the current settings (empty when they are valid)."""
    values, sources, found = _collect()
    return found + _validate(values, sources)


# --------------------------------------------------------------------------- snapshot

_lock = threading.RLock()
_current: FlowJobsSettings | None = None
_queues: dict[tuple[str, str, str], Queue] = {}
_flow_producers: dict[tuple[str, str], FlowProducer] = {}


def thaw(value: Any) -> Any:
    """Plain dicts and lists again from a frozen settings value (for the engine)."""
    if isinstance(value, Mapping):
        return {k: thaw(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [thaw(v) for v in value]
    return value


def _freeze(value: Any) -> Any:
    if isinstance(value, Mapping):
        return MappingProxyType({k: _freeze(v) for k, v in value.items()})
    return value


def _thaw(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _thaw(v) for k, v in value.items()}
    return value


def settings() -> FlowJobsSettings:
    """The current flowjobs settings; raises ImproperlyConfigured when they are invalid."""
    global _current
    current = _current
    if current is not None:
        return current
    with _lock:
        if _current is None:
            values, sources, found = _collect()
            found += _validate(values, sources)
            if found:
                raise ImproperlyConfigured("; ".join(f"{p.message} ({p.id})" for p in found))
            if isinstance(values["SHUTDOWN_TIMEOUT"], int):
                values["SHUTDOWN_TIMEOUT"] = float(values["SHUTDOWN_TIMEOUT"])
            _current = FlowJobsSettings(**{k: _freeze(v) for k, v in values.items()})
        return _current


def reset() -> None:
    """Forgets the cached settings, queues and flow producers (re-read on next use)."""
    global _current
    with _lock:
        _current = None
        queues = list(_queues.values())
        producers = list(_flow_producers.values())
        _queues.clear()
        _flow_producers.clear()
    for queue in queues:
        queue.close()
    for producer in producers:
        producer.close()


def get_queue(name: str) -> Queue:
    """The engine Queue ``name`` on the configured Redis and prefix (one per process),
    with the queue's default job options (``DEFAULT_JOB_OPTIONS`` + its QUEUES entry)."""
    current = settings()
    key = (name, current.REDIS_URL, current.PREFIX)
    with _lock:
        queue = _queues.get(key)
        if queue is None:
            options = _thaw(current.queue(name).default_job_options)
            queue = Queue(
                name,
                connection=current.REDIS_URL,
                prefix=current.PREFIX,
                default_job_options=options,
            )
            _queues[key] = queue
        return queue


def get_flow_producer() -> FlowProducer:
    """The engine FlowProducer on the configured Redis and prefix; each node's queue gets
    its default job options as ``get_queue`` would."""
    current = settings()
    key = (current.REDIS_URL, current.PREFIX)
    with _lock:
        producer = _flow_producers.get(key)
        if producer is None:
            producer = FlowProducer(
                connection=current.REDIS_URL,
                prefix=current.PREFIX,
                queues_options=_QueueOptions(current),
            )
            _flow_producers[key] = producer
        return producer


class _QueueOptions(dict):
    """``queues_options`` for FlowProducer covering every queue name, not just listed ones."""

    def __init__(self, current: FlowJobsSettings) -> None:
        super().__init__()
        self._settings = current

    def __bool__(self) -> bool:
        return True  # FlowProducer replaces a falsy queues_options with {}

    def get(self, name: str, default: Any = None) -> Any:  # type: ignore[override]
        options = _thaw(self._settings.queue(name).default_job_options)
        return {"default_job_options": options}


def _on_setting_changed(*, setting: str, **kwargs: Any) -> None:
    if setting == "FLOWJOBS":
        reset()


def connect_signals() -> None:
    """Re-read the settings whenever ``FLOWJOBS`` changes (override_settings)."""
    from django.core.signals import setting_changed

    setting_changed.connect(_on_setting_changed, dispatch_uid="flowjobs.conf.setting_changed")
