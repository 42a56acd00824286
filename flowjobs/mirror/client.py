"""The mirror's Redis client, built by the engine's connection builder."""

from __future__ import annotations

import threading

import redis

from ..engine.connection import sync_client
from .settings import mirror_settings

_clients: dict[str, redis.Redis] = {}
_clients_lock = threading.Lock()


def redis_client(url: str | None = None) -> redis.Redis:
    """A shared text-mode client for ``url`` (default: the configured REDIS_URL).

    Built by the engine's builder, so it gets the same dead-connection detection
    (timeouts, keepalive, health checks) as the workers' clients. Two things differ:
    bytes that are not UTF-8 in a foreign job hash decode to U+FFFD instead of
    raising: one such job must not stop the mirror.
    """
    url = url or mirror_settings().redis_url
    with _clients_lock:
        client = _clients.get(url)
        if client is None:
            client = sync_client(url)
            pool_options = getattr(client, "connection_pool", None)
            if pool_options is not None:  # set before the pool opens its first connection
                pool_options.connection_kwargs["encoding_errors"] = "replace"
            _clients[url] = client
        return client
