"""Retry delays: BullMQ's fixed and exponential strategies, plus custom ones by name."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .job import Job

# strategy(attempts_made, error, job) -> delay ms (-1: do not retry)
BackoffStrategy = Callable[[int, BaseException, "Job"], int]

_registry: dict[str, BackoffStrategy] = {}


def register_backoff(name: str, strategy: BackoffStrategy) -> None:
    """Makes `backoff={"type": name}` use `strategy` in every worker of this process."""
    if name in ("fixed", "exponential"):
        raise ValueError(f'"{name}" is a built-in backoff strategy')
    _registry[name] = strategy


class Backoff:
    """Helpers that build the `backoff` option."""

    @staticmethod
    def fixed(delay_ms: int, jitter: float | None = None) -> dict[str, Any]:
        return _spec("fixed", delay_ms, jitter)

    @staticmethod
    def exponential(delay_ms: int, jitter: float | None = None) -> dict[str, Any]:
        return _spec("exponential", delay_ms, jitter)

    @staticmethod
    def custom(name: str, delay_ms: int | None = None) -> dict[str, Any]:
        spec: dict[str, Any] = {"type": name}
        if delay_ms is not None:
            spec["delay"] = delay_ms
        return spec


def _spec(kind: str, delay_ms: int, jitter: float | None) -> dict[str, Any]:
    spec: dict[str, Any] = {"type": kind, "delay": delay_ms}
    if jitter is not None:
        spec["jitter"] = jitter
    return spec


def _jittered(delay: float, jitter: float) -> int:
    if not jitter:
        return int(delay)
    return int(random.random() * delay * jitter + delay * (1 - jitter))


def retry_delay(
    backoff: Any,
    attempts_made: int,
    error: BaseException,
    job: Job,
    strategies: dict[str, BackoffStrategy] | None = None,
) -> int:
    """Delay in ms before attempt `attempts_made + 1`; 0 = at once, -1 = give up."""
    if backoff is None:
        return 0
    if isinstance(backoff, int | float):
        backoff = {"type": "fixed", "delay": backoff}
    if not isinstance(backoff, dict):
        return 0
    kind = backoff.get("type")
    delay = backoff.get("delay") or 0
    jitter = backoff.get("jitter") or 0
    if kind == "fixed":
        return _jittered(delay, jitter)
    if kind == "exponential":
        return _jittered(round(2 ** (attempts_made - 1) * delay), jitter)
    strategy = (strategies or {}).get(kind) or _registry.get(str(kind))
    if strategy is None:
        raise LookupError(f'unknown backoff strategy "{kind}" (register it with register_backoff)')
    return int(strategy(attempts_made, error, job))
