"""The mirror's settings: ``FLOWJOBS["MIRROR_*"]``, then env ``FLOWJOBS_MIRROR_*``."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

from django.conf import settings as django_settings

_DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
_DEFAULT_PREFIX = "bull"
# MIRROR_BURST_LAG_S is seconds; a value over this is more likely milliseconds by mistake
# than an admin meant to lag a burst by minutes
MAX_BURST_LAG_S = 60.0


@dataclass(frozen=True)
class MirrorSettings:
    """The mirror's knobs, read from ``settings.FLOWJOBS`` (env ``FLOWJOBS_<NAME>``)."""

    redis_url: str = _DEFAULT_REDIS_URL
    prefix: str = _DEFAULT_PREFIX
    in_worker: bool = True
    # runworker's projector thread takes only CPU time nothing else wants (SCHED_IDLE),
    # once it has caught up
    idle_priority: bool = True
    # ... and its services process is restarted when that thread starved this long
    idle_starved_s: float = 10.0
    batch_size: int = 5000
    block_ms: int = 1000
    coalesce_ms: int = 200
    # how long run() may hold a burst's events unapplied (the rows' lag during a burst;
    # 0: applied as they are read, the workers paying for it)
    burst_lag_s: float = 5.0
    lock_ttl_ms: int = 30_000
    discover_interval: float = 5.0
    reconcile_interval: float | None = 900.0
    prune_interval: float = 3600.0
    history_age: int | None = None
    history_count: int | None = None

    @property
    def lock_key(self) -> str:
        return f"{self.prefix}:flowjobs:mirror-lock"


def _env(name: str) -> str | None:
    value = os.environ.get(f"FLOWJOBS_{name}")
    return value if value not in (None, "") else None


def _optional_number(value: Any) -> int | None:
    if value in (None, "", "none", "None"):
        return None
    return int(value)


def _configured() -> dict[str, Any]:
    configured = getattr(django_settings, "FLOWJOBS", None)
    return dict(configured) if isinstance(configured, dict) else {}


def mirror_settings() -> MirrorSettings:
    """Current mirror settings: ``FLOWJOBS["MIRROR_*"]``, then env ``FLOWJOBS_MIRROR_*``.

    REDIS_URL, PREFIX and MIRROR (run the projector inside runworker) come from
    ``flowjobs.conf``.
    """
    configured = _configured()

    def pick(name: str, default: Any) -> Any:
        if name in configured:
            return configured[name]
        from_env = _env(name)
        return from_env if from_env is not None else default

    redis_url, prefix, in_worker = _base_settings()
    history = pick("MIRROR_HISTORY", None)
    if isinstance(history, str):
        history = json.loads(history)
    history = history or {}
    reconcile_interval = pick("MIRROR_RECONCILE_INTERVAL", 900.0)
    from .. import conf

    return MirrorSettings(
        redis_url=redis_url,
        prefix=prefix,
        in_worker=in_worker,
        idle_priority=conf.as_bool(
            "MIRROR_IDLE_PRIORITY", pick("MIRROR_IDLE_PRIORITY", MirrorSettings.idle_priority)
        ),
        idle_starved_s=float(pick("MIRROR_IDLE_STARVED_S", MirrorSettings.idle_starved_s)),
        batch_size=int(pick("MIRROR_BATCH_SIZE", MirrorSettings.batch_size)),
        block_ms=int(pick("MIRROR_BLOCK_MS", 1000)),
        coalesce_ms=int(pick("MIRROR_COALESCE_MS", 200)),
        burst_lag_s=float(pick("MIRROR_BURST_LAG_S", MirrorSettings.burst_lag_s)),
        lock_ttl_ms=int(pick("MIRROR_LOCK_TTL_MS", 30_000)),
        discover_interval=float(pick("MIRROR_DISCOVER_INTERVAL", 5.0)),
        reconcile_interval=(
            None if reconcile_interval in (None, "", "none") else float(reconcile_interval)
        ),
        prune_interval=float(pick("MIRROR_PRUNE_INTERVAL", 3600.0)),
        history_age=_optional_number(history.get("age")),
        history_count=_optional_number(history.get("count")),
    )


def check_settings() -> list[str]:
    """Messages for invalid ``MIRROR_*`` settings (empty when they are fine)."""
    problems = []
    try:
        current = mirror_settings()
    except (TypeError, ValueError, AttributeError) as error:
        return [f"FLOWJOBS MIRROR_* settings are not valid: {error}"]
    for name in ("batch_size", "block_ms", "lock_ttl_ms"):
        if getattr(current, name) <= 0:
            problems.append(f"FLOWJOBS MIRROR_{name.upper()} must be > 0")
    if current.idle_starved_s <= 0:
        problems.append("FLOWJOBS MIRROR_IDLE_STARVED_S must be > 0")
    if current.coalesce_ms < 0:
        problems.append("FLOWJOBS MIRROR_COALESCE_MS must be >= 0")
    if not 0 <= current.burst_lag_s <= MAX_BURST_LAG_S:
        problems.append(f"FLOWJOBS MIRROR_BURST_LAG_S must be between 0 and {MAX_BURST_LAG_S:g}")
    for name in ("history_age", "history_count"):
        value = getattr(current, name)
        if value is not None and value < 0:
            problems.append(f'FLOWJOBS MIRROR_HISTORY["{name[8:]}"] must be None or >= 0')
    if current.block_ms * 3 > current.lock_ttl_ms:
        problems.append("FLOWJOBS MIRROR_BLOCK_MS must be under a third of MIRROR_LOCK_TTL_MS")
    if current.coalesce_ms * 3 > current.lock_ttl_ms:
        problems.append("FLOWJOBS MIRROR_COALESCE_MS must be under a third of MIRROR_LOCK_TTL_MS")
    from .unstorable import text_problem

    prefix_problem = text_problem("PREFIX", current.prefix, "prefix")
    if prefix_problem:
        problems.append(f"FLOWJOBS {prefix_problem}: the mirror cannot store its jobs")
    return problems


def _base_settings() -> tuple[str, str, bool]:
    """REDIS_URL, PREFIX and MIRROR, validated by ``flowjobs.conf``."""
    from .. import conf

    current = conf.settings()
    return str(current.REDIS_URL), str(current.PREFIX), bool(current.MIRROR)
