"""Range checks of a Worker's settings, run before it starts: a nonsense value (a lock
of 0 ms, 10**6 slots, a limiter of 0 jobs) would otherwise be accepted and show up
later as a spinning core, a flood of Redis commands or a worker that does nothing."""

from __future__ import annotations

import math
from typing import Any

from .errors import InvalidJobOptions, InvalidWorkerOptions
from .options import check_keep_jobs

# more slots than this is a mistake (each thread-isolated slot is a thread)
MAX_CONCURRENCY = 10_000
MIN_LOCK_DURATION_MS = 10
MIN_STALLED_INTERVAL_MS = 10
# drain_delay, the wait on an empty queue, is also what bounds the time to notice a
# silent connection (docs/deployment.md)
MAX_DRAIN_DELAY_S = 300.0
ONE_DAY_MS = 86_400_000


def _number(name: str, value: Any, minimum: float, maximum: float, whole: bool) -> Any:
    kind = "an integer" if whole else "a number"
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidWorkerOptions(f"{name} must be {kind}, got {value!r}")
    if not math.isfinite(value) or (whole and value != int(value)):
        raise InvalidWorkerOptions(f"{name} must be {kind}, got {value!r}")
    if not minimum <= value <= maximum:
        raise InvalidWorkerOptions(f"{name} must be {minimum:_}..{maximum:_}, got {value!r}")
    return int(value) if whole else float(value)


def _limiter(name: str, value: Any) -> dict[str, int] | None:
    if value is None:
        return None
    if not isinstance(value, dict) or set(value) - {"max", "duration"} or "max" not in value:
        raise InvalidWorkerOptions(f'{name} must be {{"max": int, "duration": ms}}, got {value!r}')
    return {
        "max": _number(f"{name} max", value["max"], 1, 2**31, True),
        "duration": _number(f"{name} duration", value.get("duration"), 1, ONE_DAY_MS, True),
    }


def check_worker_settings(
    *,
    concurrency: Any,
    lock_duration: Any,
    lock_renew_time: Any,
    stalled_interval: Any,
    max_stalled_count: Any,
    drain_delay: Any,
    limiter: Any,
    group_concurrency: Any,
    group_limiter: Any,
    job_timeout_ms: Any,
    metrics_max_data_points: Any,
    remove_on_complete: Any,
    remove_on_fail: Any,
    name: Any,
) -> dict[str, Any]:
    """The settings, typed; raises InvalidWorkerOptions naming the first bad one."""
    # the name goes into CLIENT SETNAME, which refuses spaces and special characters
    if name is not None and (
        not isinstance(name, str) or not name or not all(33 <= ord(c) <= 126 for c in name)
    ):
        raise InvalidWorkerOptions(
            f"name must be printable ASCII without spaces (it names the Redis client), got {name!r}"
        )
    lock = _number("lock_duration", lock_duration, MIN_LOCK_DURATION_MS, ONE_DAY_MS, True)
    checked = {
        "concurrency": _number("concurrency", concurrency, 1, MAX_CONCURRENCY, True),
        "lock_duration": lock,
        "lock_renew_time": (
            lock // 2
            if lock_renew_time is None
            else _number("lock_renew_time (ms)", lock_renew_time, 1, lock - 1, True)
        ),
        "stalled_interval": _number(
            "stalled_interval", stalled_interval, MIN_STALLED_INTERVAL_MS, ONE_DAY_MS, True
        ),
        "max_stalled_count": _number("max_stalled_count", max_stalled_count, 0, 10**6, True),
        "drain_delay": _number("drain_delay (s)", drain_delay, 0.001, MAX_DRAIN_DELAY_S, False),
        "limiter": _limiter("limiter", limiter),
        "group_limiter": _limiter("group_limiter", group_limiter),
    }
    for name, value, maximum in (
        ("group_concurrency", group_concurrency, MAX_CONCURRENCY),
        ("job_timeout_ms", job_timeout_ms, ONE_DAY_MS * 365),
        ("metrics_max_data_points", metrics_max_data_points, 10**7),
    ):
        checked[name] = None if value is None else _number(name, value, 1, maximum, True)
    for name, value in (
        ("remove_on_complete", remove_on_complete),
        ("remove_on_fail", remove_on_fail),
    ):
        try:
            checked[name] = None if value is None else check_keep_jobs("worker", name, value)
        except InvalidJobOptions as error:
            raise InvalidWorkerOptions(str(error)) from None
    return checked
