"""Running the mirror: hold the deployment's lease and project, or stand by."""

from __future__ import annotations

import atexit
import logging
import threading
import time
from typing import Any

import redis
from django.db import connection

from ..lease import FencedLease, LeaseLost, highest_fence
from .client import redis_client
from .projector import Projector
from .settings import MirrorSettings, mirror_settings

logger = logging.getLogger("flowjobs.mirror")


def run_mirror(
    stop_event: threading.Event,
    *,
    config: MirrorSettings | None = None,
    client: redis.Redis | None = None,
    on_state: Any = None,
    idle_when_caught_up: bool = False,
) -> None:
    """Hold the deployment's mirror lease and project; stand by while someone else does.
    ``idle_when_caught_up``: lower this thread to idle CPU priority once the projector
    has read every stream to its end (see ``flowjobs.priority``)."""
    config = config or mirror_settings()
    client = client or redis_client(config.redis_url)
    lease = FencedLease(client, config.lock_key, config.lock_ttl_ms)
    outage = _Outage()
    try:
        while not stop_event.is_set():
            try:
                taken = lease.acquire(floor=highest_fence(lease.key))
                outage.over()
                if not taken:
                    if on_state:
                        on_state("standby")
                    stop_event.wait(lease.wait_hint())
                    continue
                if on_state:
                    on_state("projecting")
                logger.info(
                    "mirror lease %s taken by %s (fence %d): projecting",
                    lease.key,
                    lease.token,
                    lease.fence,
                )
                Projector(client, config.prefix, config=config, lease=lease).run(
                    stop_event, idle_when_caught_up
                )
            except LeaseLost as lost:
                logger.warning("mirror lease lost (%s); standing by", lost)
            except (redis.ConnectionError, redis.TimeoutError) as error:
                outage.begin(error)
                stop_event.wait(min(5.0, config.lock_ttl_ms / 3000))
            except Exception:
                logger.exception("mirror projector failed; retrying")
                stop_event.wait(min(5.0, config.lock_ttl_ms / 3000))
            finally:
                connection.close()
    finally:
        try:
            lease.release()
        except redis.RedisError:
            logger.warning("could not release mirror lease %s", lease.key)


class _Outage:
    """One warning when Redis is lost, one info line when it is back."""

    def __init__(self) -> None:
        self.since: float | None = None

    def begin(self, error: Exception) -> None:
        if self.since is None:
            self.since = time.monotonic()
            logger.warning("mirror lost its Redis connection (%s); retrying", error)

    def over(self) -> None:
        if self.since is not None:
            logger.info("mirror reconnected to Redis after %.1f s", time.monotonic() - self.since)
            self.since = None


def start_in_worker(stop_event: threading.Event) -> threading.Thread | None:
    """Start the mirror in a daemon thread of ``runworker`` (unless MIRROR_IN_WORKER is off).

    Every runworker may call this; the fenced lease makes sure only one projector
    writes at a time across the deployment. The thread ends when ``stop_event`` is set.
    """
    config = mirror_settings()
    if not config.in_worker:
        return None
    thread = threading.Thread(
        target=run_mirror,
        args=(stop_event,),
        kwargs={"config": config, "idle_when_caught_up": config.idle_priority},
        name="flowjobs-mirror",
        daemon=True,
    )
    thread.start()

    def finish() -> None:
        # A daemon thread dies with the process: give it a moment to commit its batch
        # and release the lease, so a standby takes over now rather than after the TTL.
        if stop_event.is_set():
            thread.join(config.block_ms / 1000 + 5)

    atexit.register(finish)
    return thread
