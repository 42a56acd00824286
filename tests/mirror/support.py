"""Fixtures shared by the mirror, admin and browser tests (imported by their conftests)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import redis

from flowjobs import mirror

__all__ = [
    "flowjobs_settings",
    "make_projector",
    "rclient",
]


@pytest.fixture
def flowjobs_settings(settings: Any, redis_url: str, prefix: str) -> dict[str, Any]:
    """Points FLOWJOBS (and so the mirror and the admin) at the test's Redis and prefix."""
    settings.FLOWJOBS = {
        **getattr(settings, "FLOWJOBS", {}),
        "REDIS_URL": redis_url,
        "PREFIX": prefix,
    }
    return settings.FLOWJOBS


@pytest.fixture
def rclient(redis_url: str) -> redis.Redis:
    return mirror.redis_client(redis_url)


@pytest.fixture
def make_projector(
    flowjobs_settings: dict[str, Any], rclient: redis.Redis, prefix: str
) -> Callable[..., mirror.Projector]:
    def make(**overrides: Any) -> mirror.Projector:
        config = mirror.mirror_settings()
        if overrides:
            config = mirror.MirrorSettings(**{**config.__dict__, **overrides})
        projector = mirror.Projector(rclient, prefix, config=config)
        projector.load_positions()
        return projector

    return make
