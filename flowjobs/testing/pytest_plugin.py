"""The flowjobs pytest plugin (entry point ``pytest11``: ``flowjobs``).

Installed with flowjobs and on by default, because it costs nothing until used: importing
it loads nothing of Django or of the kit (only the ``flowjobs`` package, which a project
using flowjobs loads anyway), it has no autouse fixture and no hook that runs per test,
and the Redis server starts only when a test first asks for a fixture below. A project
that wants none of it runs ``pytest -p no:flowjobs``.

Fixtures:

- ``flowjobs``: the test's own flowjobs (a ``FlowJobsTestEnvironment``): ``FLOWJOBS``
  pointed at the session's private Redis under a fresh key prefix for the test, its keys
  deleted afterwards; ``flowjobs.run_jobs(...)`` runs the jobs. Needs Django settings
  (pytest-django, or ``django.setup()`` in a conftest).
- ``flowjobs_redis``: the session's Redis (``.url``); a private ``redis-server`` found on
  PATH, or ``FLOWJOBS_TEST_REDIS_URL``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from .environment import FlowJobsTestEnvironment
    from .server import TestRedis


@pytest.fixture(scope="session")
def flowjobs_redis() -> Iterator[TestRedis]:
    from .server import RedisServerMissing, stop_test_redis, test_redis

    try:
        server = test_redis()
    except RedisServerMissing as error:
        pytest.fail(str(error), pytrace=False)
    yield server
    stop_test_redis()


@pytest.fixture
def flowjobs(flowjobs_redis: TestRedis) -> Iterator[FlowJobsTestEnvironment]:
    from django.conf import settings

    from .environment import isolated_flowjobs

    if not settings.configured:
        pytest.fail(
            "the flowjobs fixture needs Django settings: install pytest-django and set "
            "DJANGO_SETTINGS_MODULE, or call django.setup() in your conftest.py",
            pytrace=False,
        )
    with isolated_flowjobs() as environment:
        yield environment
