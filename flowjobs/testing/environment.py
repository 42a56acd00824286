"""A test's own flowjobs: FLOWJOBS pointed at the test Redis under a fresh key prefix,
and that prefix's keys deleted afterwards (used by the pytest fixture and the mixin)."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import redis

from .. import conf
from ..engine import Queue
from .in_process import JobsRun, run_jobs
from .server import test_redis

__all__ = ["FlowJobsTestEnvironment", "isolated_flowjobs"]


@dataclass(frozen=True)
class FlowJobsTestEnvironment:
    """Where the current test's jobs live, and shortcuts to look at them."""

    redis_url: str
    prefix: str

    def run_jobs(self, queues: Iterable[str] | str | None = None, **options: Any) -> JobsRun:
        """``flowjobs.testing.run_jobs`` (same arguments)."""
        return run_jobs(queues, **options)

    def queue(self, name: str) -> Queue:
        """The engine Queue ``name``, as the project's code gets it (``conf.get_queue``)."""
        return conf.get_queue(name)

    def redis(self) -> redis.Redis:
        """A new redis-py client on the test Redis (str replies); close it when done."""
        return redis.Redis.from_url(self.redis_url, decode_responses=True)

    def key_names(self) -> list[str]:
        """Every key of this test (``<prefix>:*``), sorted."""
        with self.redis() as client:
            return sorted(client.scan_iter(match=f"{self.prefix}:*", count=1000))


def new_test_prefix() -> str:
    return "fjtest" + uuid.uuid4().hex[:12]


@contextmanager
def isolated_flowjobs(**overrides: Any) -> Iterator[FlowJobsTestEnvironment]:
    """Points ``FLOWJOBS`` at the test Redis under a new key prefix (other FLOWJOBS keys
    kept, ``overrides`` on top) until the block ends, then deletes the prefix's keys."""
    from django.conf import settings
    from django.test.utils import override_settings

    server = test_redis()
    environment = FlowJobsTestEnvironment(server.url, new_test_prefix())
    configured = dict(getattr(settings, "FLOWJOBS", None) or {})
    configured.update(REDIS_URL=environment.redis_url, PREFIX=environment.prefix, **overrides)
    override = override_settings(FLOWJOBS=configured)
    override.enable()  # setting_changed makes flowjobs.conf forget its cached queues
    try:
        yield environment
    finally:
        override.disable()
        conf.reset()
        server.delete_prefix(environment.prefix)
