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

Every client built here detects dead connections (docs/deployment.md, "Dead
connections"): TCP keepalive, a socket timeout on every read (a blocking command's
is its wait plus a margin), a PING before reusing a connection idle for a while.
Replies are decoded as UTF-8 with `surrogateescape`: a foreign value that is not
UTF-8 arrives as text holding lone surrogates (see `unreadable`) instead of raising
in the middle of a reply, and goes back to Redis as the same bytes.
"""

from __future__ import annotations

import inspect
import logging
import socket
import threading
import time
from functools import cache
from typing import Any
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit

import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.asyncio.retry
import redis.asyncio.sentinel
import redis.cluster
import redis.retry
import redis.sentinel
from redis.connection import parse_url

from .errors import InvalidConnection, InvalidQueueName

DEFAULT_URL = "redis://127.0.0.1:6379/0"
SENTINEL_SCHEMES = {"redis+sentinel": "redis", "rediss+sentinel": "rediss"}
CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}

# --- dead-connection detection -----------------------------------------------------------------
# An answer slower than this means the connection is dead (redis-py 8's default; a
# Lua script runs in well under it, BullMQ's scripts work in bounded batches).
SOCKET_TIMEOUT_S = 5.0
SOCKET_CONNECT_TIMEOUT_S = 5.0
# A blocking command (BZPOPMIN, XREAD BLOCK) may stay silent for its own wait; its
# connection's socket timeout is that wait plus this margin.
BLOCKING_MARGIN_S = 3.0
# A connection idle this long is PINGed before it is used again.
HEALTH_CHECK_INTERVAL_S = 15
# The kernel probes a silent connection after KEEPALIVE_IDLE_S and gives up after
# KEEPALIVE_COUNT unanswered probes KEEPALIVE_INTERVAL_S apart (about 11 s).
KEEPALIVE_IDLE_S = 5
KEEPALIVE_INTERVAL_S = 2
KEEPALIVE_COUNT = 3
ENCODING_ERRORS = "surrogateescape"


def keepalive_options() -> dict[int, int]:
    """TCP keepalive tuning for this platform (Linux names; macOS calls idle KEEPALIVE)."""
    names = {
        "TCP_KEEPIDLE": KEEPALIVE_IDLE_S,
        "TCP_KEEPALIVE": KEEPALIVE_IDLE_S,
        "TCP_KEEPINTVL": KEEPALIVE_INTERVAL_S,
        "TCP_KEEPCNT": KEEPALIVE_COUNT,
    }
    return {getattr(socket, n): v for n, v in names.items() if hasattr(socket, n)}


def client_options(blocking_wait_s: float | None = None) -> dict[str, Any]:
    """The redis-py options of every client flowjobs builds (a URL's own query arguments
    win). `blocking_wait_s`: the longest blocking wait the client will send."""
    return {
        "decode_responses": True,
        "encoding_errors": ENCODING_ERRORS,
        "socket_timeout": (
            SOCKET_TIMEOUT_S if blocking_wait_s is None else blocking_wait_s + BLOCKING_MARGIN_S
        ),
        "socket_connect_timeout": SOCKET_CONNECT_TIMEOUT_S,
        "socket_keepalive": True,
        "socket_keepalive_options": keepalive_options(),
        "health_check_interval": HEALTH_CHECK_INTERVAL_S,
    }


def unreadable(text: str) -> str | None:
    """Why a reply decoded with surrogateescape is not valid UTF-8 (None when it is)."""
    if not isinstance(text, str) or text.isascii():
        return None
    try:
        text.encode()
    except UnicodeEncodeError as error:
        offset = len(text[: error.start].encode("utf-8", ENCODING_ERRORS))
        code = ord(text[error.start])
        byte = f"byte 0x{code - 0xDC00:02x}" if 0xDC80 <= code <= 0xDCFF else "a surrogate"
        return f"is not valid UTF-8 ({byte} at offset {offset})"
    return None


def printable(text: str) -> str:
    """Text for a message: bytes that are not UTF-8 shown as \\xNN escapes."""
    if text.isascii():
        return text
    try:
        data = text.encode("utf-8", ENCODING_ERRORS)
    except UnicodeEncodeError:
        data = text.encode("utf-8", "backslashreplace")
    return data.decode("utf-8", "backslashreplace")


class OutageLog:
    """One warning when Redis is lost and one info line, with the outage's length, when
    it is back: however many calls fail in between, and however many tasks make them.

    Connections opened before a half-open cut can still time out after Redis is back
    (a held socket is only found dead after its timeout): a loss within
    `settle_s` of the last "back" is the same outage's tail, and is not logged again."""

    def __init__(self, logger: logging.Logger, where: str, settle_s: float | None = None) -> None:
        self.logger = logger
        self.where = where
        self.settle_s = SOCKET_TIMEOUT_S + BLOCKING_MARGIN_S if settle_s is None else settle_s
        self.since: float | None = None
        self.quiet = False  # the current loss continues an outage already reported
        self.first_since: float | None = None
        self.back_at: float | None = None
        self._lock = threading.Lock()

    def lost(self, error: BaseException) -> None:
        with self._lock:  # a worker's lanes lose their connections at the same moment
            self._lost(error)

    def _lost(self, error: BaseException) -> None:
        now = time.monotonic()
        if self.since is not None:
            if self.quiet and now - self.since >= self.settle_s:
                # not a tail after all: Redis is gone again
                self.quiet = False
                self.first_since = self.since
                self.logger.warning("lost Redis at %s (%s); reconnecting", self.where, error)
            return
        self.since = now
        if self.back_at is not None and now - self.back_at < self.settle_s:
            self.quiet = True
            self.logger.debug(
                "Redis at %s: a connection from the outage failed late (%s)", self.where, error
            )
            return
        self.quiet = False
        self.first_since = now
        self.logger.warning("lost Redis at %s (%s); reconnecting", self.where, error)

    def back(self) -> None:
        if self.since is None:
            return  # the common case, without the lock
        with self._lock:
            if self.since is not None:
                self._back()

    def _back(self) -> None:
        now = time.monotonic()
        if not self.quiet:
            self.logger.info(
                "Redis at %s is back after %.1fs", self.where, now - (self.first_since or now)
            )
        self.since = None
        self.quiet = False
        self.back_at = now


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


def sync_client(
    connection: Connection, blocking_wait_s: float | None = None, **options: Any
) -> SyncClient:
    """A decoding redis-py client for a URL (with `client_options`; `options` override
    them, e.g. a shorter ``socket_timeout``), or the given client as it is.
    `blocking_wait_s`: the longest blocking wait the caller will send."""
    url = _url_of(connection)
    if url is None:
        if not isinstance(connection, redis.Redis | redis.cluster.RedisCluster):
            raise InvalidConnection(
                "connection must be a redis:// URL, a redis-py client or None, "
                f"got {type(connection).__name__}"
            )
        return connection
    return _sync_from_url(url, **{**client_options(blocking_wait_s), **options})


def async_client(
    connection: Connection, blocking_wait_s: float | None = None, **extra: Any
) -> AsyncClient:
    """An asyncio client speaking to the same server (primary, cluster) as `connection`,
    with `client_options` filling in what a URL or a given client leaves open.
    `blocking_wait_s`: the longest blocking wait the client will send (its socket
    timeout outlasts it). `single_connection_client=True` asks for a client with one
    dedicated connection."""
    detection = client_options(blocking_wait_s)
    forced = {"decode_responses": True, "encoding_errors": ENCODING_ERRORS}
    if blocking_wait_s is not None:
        forced["socket_timeout"] = detection["socket_timeout"]
    url = _url_of(connection)
    if url is not None:
        scheme = url.split("://", 1)[0]
        if scheme in SENTINEL_SCHEMES:
            hosts, service, kwargs, sentinel_kwargs = _sentinel_parts(url)
            kwargs = {**detection, **kwargs, **forced}
            return _async_sentinel(hosts, service, kwargs, sentinel_kwargs, extra)
        if scheme in CLUSTER_SCHEMES:
            hosts, kwargs = _cluster_parts(url)
            return _async_cluster(hosts, {**detection, **kwargs, **forced}, extra)
        client = redis.asyncio.Redis.from_url(url, **{**detection, **forced, **extra})
        # from_url lets the URL's own arguments win; a blocking wait must not be cut
        client.connection_pool.connection_kwargs.update(forced)
        return client
    sync_client(connection)  # raises InvalidConnection for anything else
    if isinstance(connection, redis.cluster.RedisCluster):
        hosts = [(node.host, node.port) for node in connection.get_nodes()]
        kwargs = _fill_in(connection.nodes_manager.connection_kwargs, detection, forced)
        return _async_cluster(hosts, kwargs, extra)
    assert isinstance(connection, redis.Redis)
    pool = connection.connection_pool
    kwargs = _fill_in(pool.connection_kwargs, detection, forced)
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
    kwargs.update(extra)
    return redis.asyncio.Redis(**_only_accepted(kwargs, redis.asyncio.Redis.__init__))


def _fill_in(
    given: dict[str, Any], detection: dict[str, Any], forced: dict[str, Any]
) -> dict[str, Any]:
    """A given client's connection settings, with `detection` filling in what it leaves
    open (no socket timeout, no keepalive: redis-py 6's defaults) and `forced` on top."""
    kwargs = dict(given)
    for name, value in detection.items():
        if kwargs.get(name) is None:
            kwargs[name] = value
    kwargs.update(forced)
    retry = kwargs.get("retry")
    if isinstance(retry, redis.retry.Retry):
        # the given client's policy, for asyncio (redis-py 8 converts it with a warning),
        # all of it: its error check too, where this redis-py has one
        checks = getattr(retry, "_is_retryable", None)
        kwargs["retry"] = redis.asyncio.retry.Retry(
            retry._backoff,
            retry._retries,
            retry._supported_errors,
            **({"is_retryable": checks} if checks is not None else {}),
        )
    return kwargs


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
