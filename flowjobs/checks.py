"""System checks: flowjobs settings (errors) and the Redis server (warnings).

Ids:
- flowjobs.E001 FLOWJOBS is not a dict, or has unknown keys
- flowjobs.E002 REDIS_URL is not a redis://, rediss:// or unix:// URL
- flowjobs.E003 PREFIX is empty or contains ':'
- flowjobs.E004 CONCURRENCY is not a positive integer
- flowjobs.E005 a duration/count is negative, zero or not an integer
- flowjobs.E006 DEFAULT_JOB_OPTIONS is rejected by the engine
- flowjobs.E007 a boolean setting is not a boolean
- flowjobs.E008 QUEUES is malformed (unknown keys, bad values)
- flowjobs.E030 TASKS names flowjobs' django.tasks backend on a Django older than 6.0
- flowjobs.W001 Redis does not answer at REDIS_URL (1 s timeout; password masked)
- flowjobs.W002 Redis maxmemory-policy is not noeviction (jobs may be evicted)
- flowjobs.E021 an OUTBOX_* setting is not valid
- flowjobs.W003 outbox entries wait and no relay is running (none holds its lock in Redis)
- flowjobs.W004 the outbox holds an entry older than OUTBOX_MAX_AGE

The outbox checks (W003, W004) read the database, so they run only when asked for
databases: ``manage.py check --database default`` (a deploy or health check).

The Redis checks run with every ``check`` (tag ``flowjobs``), unless the
``CHECK_REDIS`` setting is False; they are warnings so ``migrate`` and
``runserver`` still work while Redis is down.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import django
import redis
from django.conf import settings as django_settings
from django.core import checks
from django.db import DatabaseError

from . import conf, outbox
from .engine.connection import eviction_warning, probe

__all__ = [
    "check_outbox",
    "check_redis",
    "check_settings",
    "check_tasks_backend",
    "register_checks",
]

TAG = "flowjobs"
CONNECT_TIMEOUT_S = 1.0


def check_settings(
    app_configs: Sequence[Any] | None = None, **kwargs: Any
) -> list[checks.CheckMessage]:
    from . import mirror

    found = [
        checks.Error(problem.message, hint=problem.hint or None, id=problem.id)
        for problem in conf.problems()
    ]
    if not found:  # the mirror's settings build on valid base settings
        found += [checks.Error(message, id="flowjobs.E020") for message in mirror.check_settings()]
        found += [checks.Error(message, id="flowjobs.E021") for message in outbox.check_settings()]
    return found


def check_outbox(
    app_configs: Sequence[Any] | None = None,
    databases: Sequence[str] | None = None,
    **kwargs: Any,
) -> list[checks.CheckMessage]:
    """The outbox relay is alive and the backlog young (database-tagged: needs rows)."""
    if not databases or conf.problems() or outbox.check_settings():
        return []
    config = outbox.outbox_settings()
    found: list[checks.CheckMessage] = []
    waiting = 0
    for alias in config.databases:
        if alias not in databases:
            continue
        try:
            count, age = outbox.backlog(alias)
        except DatabaseError:
            continue  # not migrated yet: migrate's own output says so
        waiting += count
        if age is not None and age > config.max_age:
            found.append(
                checks.Warning(
                    f"the outbox of database {alias!r} holds {count} entr(ies), the oldest "
                    f"{age:.0f}s old (OUTBOX_MAX_AGE {config.max_age:g}s): jobs committed "
                    "but not in Redis yet",
                    hint="Is Redis reachable, and a relay running (runworker with OUTBOX_RELAY "
                    "on, or manage.py relayoutbox)? Entries Redis refused show their "
                    "last_error in the admin dashboard.",
                    id="flowjobs.W004",
                )
            )
    # An empty outbox needs no relay yet: no warning at a first `migrate`, before any worker.
    if waiting and conf.settings().CHECK_REDIS:
        try:
            alive = outbox.relay_heartbeat_ms() is not None
        except redis.RedisError:
            alive = True  # W001 already says Redis does not answer
        if not alive:
            found.append(
                checks.Warning(
                    f"no outbox relay is running and the outbox holds {waiting} entr(ies): "
                    "entries whose push after commit failed stay in the database until one "
                    "runs",
                    hint="Run manage.py runworker (OUTBOX_RELAY on, the default) or "
                    "manage.py relayoutbox.",
                    id="flowjobs.W003",
                )
            )
    return found


def check_tasks_backend(
    app_configs: Sequence[Any] | None = None, **kwargs: Any
) -> list[checks.CheckMessage]:
    """Django 5.2 ignores TASKS, so a flowjobs backend named there would silently do
    nothing: say so instead."""
    if django.VERSION >= (6, 0):
        return []
    tasks = getattr(django_settings, "TASKS", None)
    if not isinstance(tasks, dict):
        return []
    return [
        checks.Error(
            f"TASKS[{alias!r}] uses {backend!r}, which needs Django 6.0 or newer "
            f"(django.tasks); this is Django {django.get_version()}.",
            hint="Upgrade Django, or enqueue with flowjobs.enqueue on this version.",
            id="flowjobs.E030",
        )
        for alias, config in tasks.items()
        if isinstance(config, dict)
        and str(backend := config.get("BACKEND", "")).startswith("flowjobs.")
    ]


def check_redis(
    app_configs: Sequence[Any] | None = None, **kwargs: Any
) -> list[checks.CheckMessage]:
    if conf.problems():
        return []  # the settings errors say what to fix first
    current = conf.settings()
    if not current.CHECK_REDIS:
        return []
    try:
        policy = probe(current.REDIS_URL, CONNECT_TIMEOUT_S)
    except (redis.RedisError, OSError) as error:
        return [
            checks.Warning(
                f"Redis at {current.redis_url_masked} does not answer: {error}",
                hint="Start Redis or set FLOWJOBS['REDIS_URL'] / FLOWJOBS_REDIS_URL; "
                "set FLOWJOBS['CHECK_REDIS'] = False to skip this check.",
                id="flowjobs.W001",
            )
        ]
    warning = eviction_warning(current.redis_url_masked, policy)
    if warning:
        return [
            checks.Warning(
                warning,
                hint="Set maxmemory-policy noeviction (as BullMQ requires).",
                id="flowjobs.W002",
            )
        ]
    return []


def register_checks() -> None:
    checks.register(check_settings, TAG)
    checks.register(check_tasks_backend, TAG)
    checks.register(check_redis, TAG)
    checks.register(check_outbox, TAG, checks.Tags.database)
