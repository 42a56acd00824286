"""Redis clients from what callers pass as `connection=`.

A connection is a URL, a ready redis-py client, or None (`redis://127.0.0.1:6379/0`).
URLs:
- `redis://[user:password@]host:port/db`, `rediss://...` (TLS), `unix://...`: one server;
- `redis+sentinel://[user:password@]host:port[,host:port...]/<service>[/db]`
  (`rediss+sentinel://` for TLS): the current primary of `<service>` as the Sentinels
  report it, found again after a failover. The user and password are the primary's;
  `?sentinel_username=...&sentinel_password=...` authenticate to the Sentinels;
- `redis+cluster://[user:password@]host:port[,host:port...]` (`rediss+cluster://`):
  a Redis Cluster, reached through any of the listed nodes. The key prefix must
  hold a hash tag (`{bull}`) so all keys of all queues live in one slot.
Other query arguments are redis-py's (`socket_timeout`, `ssl_ca_certs`, ...).
"""

from __future__ import annotations

import inspect
from functools import cache
from typing import Any
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit

import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.asyncio.sentinel
import redis.cluster
import redis.sentinel
from redis.connection import parse_url

from .errors import InvalidQueueName

DEFAULT_URL = "redis://127.0.0.1:6379/0"
SENTINEL_SCHEMES = {"redis+sentinel": "redis", "rediss+sentinel": "rediss"}
CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}

Connection = str | redis.Redis | redis.cluster.RedisCluster | None
SyncClient = redis.Redis | redis.cluster.RedisCluster
AsyncClient = redis.asyncio.Redis | redis.asyncio.cluster.RedisCluster


def _url_of(connection: Connection) -> str | None:
    if connection is None:
        return DEFAULT_URL
    if isinstance(connection, str):
        return connection
    return None


# --- URLs with several hosts (Sentinel, Cluster) ------------------------------------------------


def _split_multi_host(url: str) -> tuple[str, list[tuple[str, int]], list[str], dict[str, Any]]:
    """`scheme://[auth@]h:p,h:p/path?query` -> (plain scheme, hosts, path parts, client
    kwargs parsed by redis-py from the auth and query)."""
    scheme, rest = url.split("://", 1)
    plain = {**SENTINEL_SCHEMES, **CLUSTER_SCHEMES}[scheme]
    parts = urlsplit(f"{plain}://{rest}")
    auth, _, hostlist = parts.netloc.rpartition("@")
    hosts = []
    for item in hostlist.split(","):
        host, _, port = item.strip().rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"{scheme} URL: expected host:port, got {item!r} in {describe(url)}")
        hosts.append((host.strip("[]"), int(port)))
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    sentinel_auth = {
        name: query.pop(f"sentinel_{name}")
        for name in ("username", "password")
        if f"sentinel_{name}" in query
    }
    # let redis-py type the remaining arguments, as for a one-host URL
    single = f"{plain}://{auth + '@' if auth else ''}{hostlist.split(',')[0]}/0"
    if query:
        single += "?" + urlencode(query)
    kwargs = parse_url(single)
    for name in ("host", "port", "db", "connection_class"):
        kwargs.pop(name, None)
    if plain == "rediss":
        kwargs["ssl"] = True
    kwargs["_sentinel_auth"] = sentinel_auth
    path = [unquote(p) for p in parts.path.split("/") if p]
    return scheme, hosts, path, kwargs


def _sentinel_parts(url: str) -> tuple[list[tuple[str, int]], str, dict, dict]:
    scheme, hosts, path, kwargs = _split_multi_host(url)
    if not path:
        raise ValueError(f"{scheme} URL needs the service name: {describe(url)}")
    if len(path) > 1:
        kwargs["db"] = int(path[1])
    sentinel_kwargs = dict(kwargs.pop("_sentinel_auth"))
    for name, value in kwargs.items():
        if name.startswith(("ssl", "socket_")):
            sentinel_kwargs[name] = value
    return hosts, path[0], kwargs, sentinel_kwargs


def _cluster_parts(url: str) -> tuple[list[tuple[str, int]], dict]:
    scheme, hosts, path, kwargs = _split_multi_host(url)
    kwargs.pop("_sentinel_auth")
    if path and path != ["0"]:
        raise ValueError(f"{scheme} URL: Redis Cluster has only database 0: {describe(url)}")
    return hosts, kwargs


@cache
def _accepted(function: Any) -> frozenset[str]:
    return frozenset(inspect.signature(function).parameters)


def _only_accepted(kwargs: dict[str, Any], function: Any) -> dict[str, Any]:
    accepted = _accepted(function)
    return {k: v for k, v in kwargs.items() if k in accepted}


# --- clients -----------------------------------------------------------------------------------


def _sync_from_url(url: str, **options: Any) -> SyncClient:
    scheme = url.split("://", 1)[0]
    if scheme in SENTINEL_SCHEMES:
        hosts, service, kwargs, sentinel_kwargs = _sentinel_parts(url)
        sentinel = redis.sentinel.Sentinel(hosts, sentinel_kwargs=sentinel_kwargs)
        return sentinel.master_for(service, **{**kwargs, **options})
    if scheme in CLUSTER_SCHEMES:
        hosts, kwargs = _cluster_parts(url)
        nodes = [redis.cluster.ClusterNode(host, port) for host, port in hosts]
        options.pop("health_check_interval", None)
        return redis.cluster.RedisCluster(startup_nodes=nodes, **{**kwargs, **options})
    return redis.Redis.from_url(url, **options)


def sync_client(connection: Connection, **options: Any) -> SyncClient:
    """A decoding redis-py client for a URL (``options`` override redis-py's, e.g.
    ``socket_timeout``), or the given client as it is."""
    url = _url_of(connection)
    if url is None:
        assert isinstance(connection, redis.Redis | redis.cluster.RedisCluster)
        return connection
    return _sync_from_url(url, **{"decode_responses": True, "health_check_interval": 30, **options})


def async_client(connection: Connection, **extra: Any) -> AsyncClient:
    """An asyncio client speaking to the same server (primary, cluster) as `connection`.
    `single_connection_client=True` asks for a client with one dedicated connection."""
    url = _url_of(connection)
    if url is not None:
        scheme = url.split("://", 1)[0]
        if scheme in SENTINEL_SCHEMES:
            hosts, service, kwargs, sentinel_kwargs = _sentinel_parts(url)
            return _async_sentinel(hosts, service, kwargs, sentinel_kwargs, extra)
        if scheme in CLUSTER_SCHEMES:
            hosts, kwargs = _cluster_parts(url)
            return _async_cluster(hosts, kwargs, extra)
        return redis.asyncio.Redis.from_url(url, decode_responses=True, **extra)
    if isinstance(connection, redis.cluster.RedisCluster):
        hosts = [(node.host, node.port) for node in connection.get_nodes()]
        kwargs = dict(connection.nodes_manager.connection_kwargs)
        return _async_cluster(hosts, kwargs, extra)
    assert isinstance(connection, redis.Redis)
    pool = connection.connection_pool
    kwargs = dict(pool.connection_kwargs)
    if isinstance(pool, redis.sentinel.SentinelConnectionPool):
        hosts = [
            (
                s.connection_pool.connection_kwargs["host"],
                s.connection_pool.connection_kwargs["port"],
            )
            for s in pool.sentinel_manager.sentinels
        ]
        kwargs.pop("connection_pool", None)
        kwargs["ssl"] = "SSL" in pool.connection_class.__name__
        sentinel_kwargs = dict(pool.sentinel_manager.sentinel_kwargs)
        return _async_sentinel(hosts, pool.service_name, kwargs, sentinel_kwargs, extra)
    if "SSL" in pool.connection_class.__name__:
        kwargs["ssl"] = True
    kwargs["decode_responses"] = True
    kwargs.update(extra)
    return redis.asyncio.Redis(**_only_accepted(kwargs, redis.asyncio.Redis.__init__))


class _SentinelConnection(redis.asyncio.sentinel.SentinelManagedConnection):
    """Asks the Sentinels for the primary on every (re)connect. redis-py's own class
    does so only in connect(); a connection that reconnects by itself when a command
    is sent (a worker's dedicated connections) would return to the dead primary."""

    async def connect_check_health(self, *args: Any, **kwargs: Any) -> None:
        if not self.is_connected and self.connection_pool.is_master:
            self.host, self.port = await self.connection_pool.get_master_address()
        await super().connect_check_health(*args, **kwargs)


class _SentinelSSLConnection(_SentinelConnection, redis.asyncio.SSLConnection):
    pass


def _async_sentinel(
    hosts: list[tuple[str, int]],
    service: str,
    kwargs: dict[str, Any],
    sentinel_kwargs: dict[str, Any],
    extra: dict[str, Any],
) -> redis.asyncio.Redis:
    accepted = _accepted(redis.asyncio.Redis.__init__)
    sentinel = redis.asyncio.sentinel.Sentinel(
        hosts, sentinel_kwargs={k: v for k, v in sentinel_kwargs.items() if k in accepted}
    )
    pool_kwargs = {k: v for k, v in kwargs.items() if k in accepted}
    pool_kwargs["decode_responses"] = True
    ssl = pool_kwargs.pop("ssl", False)
    pool_kwargs["connection_class"] = _SentinelSSLConnection if ssl else _SentinelConnection
    single = extra.pop("single_connection_client", False)
    pool_kwargs.update(extra)
    pool = redis.asyncio.sentinel.SentinelConnectionPool(service, sentinel, **pool_kwargs)
    return redis.asyncio.Redis(connection_pool=pool, single_connection_client=single)


def _async_cluster(
    hosts: list[tuple[str, int]], kwargs: dict[str, Any], extra: dict[str, Any]
) -> redis.asyncio.cluster.RedisCluster:
    extra = dict(extra)
    extra.pop("single_connection_client", None)  # a cluster client keeps one pool per node
    options = {**kwargs, "decode_responses": True, **extra}
    if "SSL" in getattr(options.pop("connection_class", None), "__name__", ""):
        options["ssl"] = True
    nodes = [redis.asyncio.cluster.ClusterNode(host, port) for host, port in hosts]
    return redis.asyncio.cluster.RedisCluster(
        startup_nodes=nodes,
        **_only_accepted(options, redis.asyncio.cluster.RedisCluster.__init__),
    )


def is_cluster(client: Any) -> bool:
    return isinstance(client, redis.cluster.RedisCluster | redis.asyncio.cluster.RedisCluster)


def check_cluster_prefix(client: Any, prefix: str) -> None:
    """On Redis Cluster every key a script touches must live in one slot: the prefix
    must carry a hash tag, so that all keys of all queues under it share the slot."""
    if not is_cluster(client):
        return
    start = prefix.find("{")
    end = prefix.find("}", start + 1) if start >= 0 else -1
    if start < 0 or end <= start + 1:
        raise InvalidQueueName(
            f'on Redis Cluster the prefix must contain a hash tag like "{{bull}}" so all '
            f'queue keys share one slot; got prefix "{prefix}" (use e.g. "{{{prefix}}}")'
        )


def describe(connection: Connection) -> str:
    """The connection as text with any password masked, for messages."""
    url = _url_of(connection)
    if url is None:
        if isinstance(connection, redis.cluster.RedisCluster):
            nodes = ",".join(f"{n.host}:{n.port}" for n in connection.get_nodes()[:3])
            return f"redis+cluster://{nodes}"
        pool = connection.connection_pool  # type: ignore[union-attr]
        if isinstance(pool, redis.sentinel.SentinelConnectionPool):
            return f"redis+sentinel://.../{pool.service_name}"
        kwargs = pool.connection_kwargs
        return f"redis://{kwargs.get('host', '?')}:{kwargs.get('port', '?')}/{kwargs.get('db', 0)}"
    if "://" not in url:
        return url
    scheme, rest = url.split("://", 1)
    rest, mark, query = rest.partition("?")
    hosts, slash, path = rest.partition("/")
    if "@" in hosts:
        credentials, _, where = hosts.rpartition("@")
        user = credentials.split(":", 1)[0] if ":" in credentials else ""
        rest = f"{user}:***@{where}{slash}{path}"
    if query:
        masked = [
            (k, "***" if "password" in k.lower() else v)
            for k, v in parse_qsl(query, keep_blank_values=True)
        ]
        query = urlencode(masked, safe="*/")
    return f"{scheme}://{rest}{mark}{query}"


def eviction_warning(where: str, policy: str | None) -> str | None:
    """Why a maxmemory-policy other than noeviction loses jobs (None when it is fine or
    unknown)."""
    if policy is None or policy == "noeviction":
        return None
    return (
        f'Redis at {where} uses maxmemory-policy "{policy}": when memory runs out it deletes '
        "keys and jobs are lost; set maxmemory-policy noeviction"
    )


def probe(connection: Connection, timeout_s: float = 1.0) -> str | None:
    """Pings the server with short timeouts and no retries; returns its maxmemory-policy
    (None when CONFIG is not allowed, e.g. on managed Redis). Raises redis errors (or
    OSError) when it cannot be reached."""
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    options: dict[str, Any] = {
        "socket_connect_timeout": timeout_s,
        "socket_timeout": timeout_s,
        "retry": Retry(NoBackoff(), 0),
        "decode_responses": True,
    }
    url = _url_of(connection)
    client = _sync_from_url(url, **options) if url is not None else connection
    try:
        client.ping()
        try:
            return client.config_get("maxmemory-policy").get("maxmemory-policy")
        except redis.ResponseError:
            return None
    finally:
        if url is not None:
            client.close()
