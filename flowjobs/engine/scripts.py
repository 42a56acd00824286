"""Loading the Lua scripts (one per state transition) and running them.

Each `lua/<name>.lua` may pull in shared helpers with a line
`--- @include "includes/<file>"`; every include is inlined once, in order.
Scripts are sent once per server with SCRIPT LOAD and run with EVALSHA; a
server that lost its script cache (restart, SCRIPT FLUSH) gets them again.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import cache
from pathlib import Path
from typing import Any

import redis
import redis.asyncio
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, OutOfMemoryError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .errors import RedisOutOfMemory
from .keys import raise_foreign_value

LUA_DIR = Path(__file__).parent / "lua"
_INCLUDE = re.compile(r'^--- @include "([^"]+)"\s*$', re.MULTILINE)

Arg = str | int | float


def _expand(path: Path, seen: set[Path]) -> str:
    def replace(match: re.Match[str]) -> str:
        included = (LUA_DIR / f"{match.group(1)}.lua").resolve()
        if included in seen:
            return ""
        seen.add(included)
        return _expand(included, seen)

    return _INCLUDE.sub(replace, path.read_text())


# A top-level helper: `local function name(` at the start of a line, up to the first
# line that is just `end` (its body is indented).
_FUNCTION = re.compile(r"^local function (\w+)\(.*?^end$\n?", re.MULTILINE | re.DOTALL)
_COMMENT = re.compile(r"--\[\[.*?\]\]|--[^\n]*", re.DOTALL)
_WORD = re.compile(r"\w+")


def without_unused_functions(text: str) -> str:
    """`text` without the top-level helpers nothing in it calls. Redis runs a script's
    whole text on every call, so every helper an include defines is made anew each time
    (about a sixth of a microsecond each); a script that pulls in 39 of them and calls
    a dozen paid for the rest on every job."""
    functions = {match.group(1): match for match in _FUNCTION.finditer(text)}
    defined = len(re.findall(r"^local function ", text, re.MULTILINE))
    if defined != len(functions) or any(
        "\nlocal function " in match.group(0) for match in functions.values()
    ):
        raise ValueError("a top-level Lua helper must end with a line that is just `end`")
    rest = _FUNCTION.sub("", text)
    used: set[str] = set()
    pending = set(_WORD.findall(_COMMENT.sub("", rest)))
    while pending:
        name = pending.pop()
        if name in functions and name not in used:
            used.add(name)
            body = functions[name].group(0).split("\n", 1)[1]
            pending |= set(_WORD.findall(_COMMENT.sub("", body)))
    return _FUNCTION.sub(lambda match: match.group(0) if match.group(1) in used else "", text)


# `--- @lazy` on the line above a helper: see with_lazy_helpers.
_LAZY_MARK = "--- @lazy\n"
_STRING = re.compile(r'"(?:[^"\\\n]|\\.)*"|\'(?:[^\'\\\n]|\\.)*\'')


def with_lazy_helpers(text: str) -> str:
    """`text` with the helpers marked `--- @lazy` made on a script run's first call of
    one of them, not at its start. Redis runs a script's whole text on every call, and
    making a helper costs more the more locals it captures (a finished plain job's
    script made 44 and called 16: 5 to 8 µs of Redis's time a job). The marked helpers
    become locals of one function, `lazy`, defined where the last of them was (each
    saw every local it needs by then); it makes them all the first time it runs and
    hands back the same table after that. Every other mention of one must be a call,
    `name(`, and becomes `lazy().name(`."""
    marked = [
        match for match in _FUNCTION.finditer(text) if text.endswith(_LAZY_MARK, 0, match.start())
    ]
    if not marked:
        return text
    names = [match.group(1) for match in marked]
    mention = re.compile(r"(?<![\w.:])(" + "|".join(names) + r")\b")
    outside: list[str] = []
    start = 0
    for match in marked:
        outside.append(text[start : match.start() - len(_LAZY_MARK)])
        start = match.end()
    outside.append(text[start:])
    call = re.compile(mention.pattern + r"(?=\s*\()")
    outside = [call.sub(r"lazy().\1", part) for part in outside]
    for part in outside:
        for found in mention.finditer(_STRING.sub('""', _COMMENT.sub("", part))):
            raise ValueError(f"lazy helper {found.group(1)} is used other than by a call")
    definitions = "".join(match.group(0) for match in marked)
    block = (
        "lazy = function()\n"
        "  if lazyHelpers == nil then\n"
        f"{definitions}"
        f"  lazyHelpers = {{{', '.join(f'{name} = {name}' for name in names)}}}\n"
        "  end\n"
        "  return lazyHelpers\n"
        "end\n"
    )
    return "local lazyHelpers, lazy\n" + "".join(outside[:-1]) + block + outside[-1]


@cache
def source(name: str) -> tuple[str, str]:
    """The flattened text of script `name` (unused helpers left out, marked ones made
    lazily) and its SHA1."""
    text = with_lazy_helpers(without_unused_functions(_expand(LUA_DIR / f"{name}.lua", set())))
    return text, hashlib.sha1(text.encode()).hexdigest()


def script_names() -> list[str]:
    return sorted(p.stem for p in LUA_DIR.glob("*.lua"))


def _is_noscript(error: BaseException) -> bool:
    return isinstance(error, NoScriptError) or (
        isinstance(error, ResponseError) and str(error).startswith("NOSCRIPT")
    )


def _plain(client: Any) -> bool:
    """A standalone client on a connection pool (not a cluster, not single-connection)."""
    return type(client) is redis.Redis and client.connection is None


def run(
    client: redis.Redis,
    name: str,
    keys: Sequence[str],
    args: Sequence[Arg],
    meanwhile: Callable[[], None] | None = None,
) -> Any:
    """Runs script `name`. `meanwhile()`, when given, runs after the call is sent and
    before its answer is read: the caller's own work done while Redis runs the script
    (one call at a time is a round trip of waiting otherwise; a cluster or
    single-connection client runs it just before the call). It must not fail on input:
    the call may already be written when it runs. If it raises anyway, the connection
    is closed (its answer unread) and the error raised."""
    if _plain(client):
        return _run_packed(client, name, keys, args, meanwhile)
    if meanwhile is not None:
        meanwhile()
    text, sha = source(name)
    try:
        try:
            return client.evalsha(sha, len(keys), *keys, *args)
        except NoScriptError:
            client.script_load(text)
            return client.evalsha(sha, len(keys), *keys, *args)
    except OutOfMemoryError as error:
        raise out_of_memory(name, error) from error


def out_of_memory(name: str, error: OutOfMemoryError) -> RedisOutOfMemory:
    """Redis's refusal of a write at maxmemory, as the named flowjobs error."""
    return RedisOutOfMemory(
        f"{name}: Redis is out of memory and refused the write ({error}); nothing was "
        "written: free memory or raise maxmemory"
    )


def _run_packed(
    client: redis.Redis,
    name: str,
    keys: Sequence[str],
    args: Sequence[Arg],
    meanwhile: Callable[[], None] | None,
) -> Any:
    """`run` on a pooled connection with the call packed by `pack_call` (redis-py's
    generic command path costs about as much as the round trip)."""
    spare = SpareConnections.of(client.connection_pool)
    connection = spare.take()
    try:
        return _run_on(connection, name, keys, args, meanwhile)
    finally:
        spare.give_back(connection)


def hgetall_many(client: redis.Redis, keys: Sequence[str]) -> list[dict[str, Any]]:
    """HGETALL of each key in one round trip (an empty dict for a missing key), packed
    directly as `pack_call` packs a script call: redis-py's pipeline (a command object,
    the generic packer and a reply callback per hash) cost the mirror 15 µs of CPU a
    hash against 9. An error reply (a key that is not a hash) is raised after every
    reply was read, as a pipeline raises it; a broken connection is closed."""
    if not keys:
        return []
    if not _plain(client):
        pipe = client.pipeline(transaction=False)
        for key in keys:
            pipe.hgetall(key)
        return pipe.execute()
    spare = SpareConnections.of(client.connection_pool)
    connection = spare.take()
    hashes: list[dict[str, Any]] = []
    error: ResponseError | None = None
    try:
        connection.send_packed_command(
            [b"".join(b"*2\r\n" + _bulks((b"HGETALL", key)) for key in keys)]
        )
        for _ in keys:
            try:
                reply = connection.read_response()
            except ResponseError as refused:  # an answer: the next reply follows it
                error = error or refused
                reply = {}
            if not isinstance(reply, dict):  # RESP2: [field, value, ...]
                pairs = iter(reply)
                reply = dict(zip(pairs, pairs, strict=True))
            hashes.append(reply)
    except BaseException:
        connection.disconnect()
        raise
    finally:
        spare.give_back(connection)
    if error is not None:
        raise error
    return hashes


def _bulks(values: Iterable[Arg | bytes]) -> bytes:
    """Command arguments as RESP bulk strings, one after another: text as UTF-8 (an id
    read from Redis that is not UTF-8 goes back as the same bytes), a number as its
    digits. One loop without a call per argument: a finish's 18 cost 11 µs through a
    generator of per-argument calls, 9.6 this way."""
    parts = []
    append = parts.append
    for value in values:
        if isinstance(value, str):
            data = value.encode("utf-8", "surrogateescape")
        elif isinstance(value, bytes):
            data = value
        else:
            data = str(value).encode()
        append(b"$%d\r\n%b\r\n" % (len(data), data))
    return b"".join(parts)


_forks = 0


def _count_fork() -> None:
    global _forks
    _forks += 1


# Forks of this process's line, counted in each child: what was made before a fork (the
# parent's kept connections) is not the child's to use. Reading
# it costs no system call; os.getpid() is one on every call (glibc keeps no pid).
os.register_at_fork(after_in_child=_count_fork)


class SpareConnections:
    """Connections of one pool kept aside for script calls. Taking a connection from a
    redis-py 8 pool and giving it back (its lock, its state checks, its metrics) cost
    a seventh of a whole Queue.add; here it is a list's pop and append, plus the pool's
    own check that the server has not closed the connection meanwhile (a restart).

    Kept connections stay in use as far as the pool knows, so at most a quarter of its
    `max_connections` are kept; past that they go back to it. A forked child starts
    with none: the parent's sockets are not its to use. Only a plain `ConnectionPool`
    has connections kept: a blocking pool's waiters, or a Sentinel pool that moves its
    connections to a new master, need every connection back."""

    _ATTRIBUTE = "_flowjobs_spare_connections"

    def __init__(self, pool: Any) -> None:
        self.pool = pool
        self.forks = _forks
        self.idle: list[Any] = []
        self.limit = max(1, pool.max_connections // 4) if type(pool) is redis.ConnectionPool else 0

    @classmethod
    def of(cls, pool: Any) -> SpareConnections:
        spare = getattr(pool, cls._ATTRIBUTE, None)
        if spare is None or spare.forks != _forks:
            spare = cls(pool)
            setattr(pool, cls._ATTRIBUTE, spare)
        return spare

    def take(self) -> Any:
        try:
            connection = self.idle.pop()
        except IndexError:
            return self.pool.get_connection()  # connected and checked by the pool
        if connection._sock is None:
            return connection  # closed after a fault: the call connects it, once
        try:
            closed = connection.can_read()  # unread bytes here: the server hung up
        except (redis.ConnectionError, redis.TimeoutError, OSError):
            closed = True
        if closed:
            connection.disconnect()  # the call reconnects it
        return connection

    def give_back(self, connection: Any) -> None:
        if len(self.idle) < self.limit:
            self.idle.append(connection)
        else:
            self.pool.release(connection)


def _run_on(
    connection: Any,
    name: str,
    keys: Sequence[str],
    args: Sequence[Arg],
    meanwhile: Callable[[], None] | None = None,
) -> Any:
    """One packed script call on a sync connection, `meanwhile` (see `run`) run while it
    is under way. A call that may have reached Redis is never re-sent: a connection the
    call did not end on an answer (broken, timed out, interrupted, `meanwhile` raised)
    is closed, as what is left unread would be taken for the next call's answer, and the
    error raised."""
    try:
        connection.send_packed_command([pack_call(name, keys, args)])
        if meanwhile is not None:
            meanwhile()
        try:
            return connection.read_response()
        except NoScriptError:
            connection.send_command("SCRIPT", "LOAD", source(name)[0])
            connection.read_response()
            connection.send_packed_command([pack_call(name, keys, args)])
            return connection.read_response()
    except OutOfMemoryError as error:
        raise out_of_memory(name, error) from error
    except ResponseError:
        raise  # an answer: the connection is ready for the next call
    except BaseException:
        connection.disconnect()
        raise


class SyncLane:
    """A thread's run of script calls on one spare connection (`SpareConnections`) it
    holds until `release`; errors come back as exception objects, a broken connection
    raises. Several calls go in one round trip (`run_many`); a client that is not a
    plain pooled one (a cluster, where pipelines refuse EVALSHA) runs them one by one
    with `run`."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self.connection: Any = None

    def run_calls(
        self, calls: Sequence[Call], meanwhile: Callable[[], None] | None = None
    ) -> list[Any]:
        """The calls' answers; `meanwhile()` runs while one call is under way (see `run`),
        before several."""
        plain = _plain(self.client)
        if len(calls) != 1 and plain:
            if meanwhile is not None:
                meanwhile()
            return run_many(self.client, calls)
        results: list[Any] = []
        for name, keys, args in calls:
            if plain and self.connection is None:
                self.connection = SpareConnections.of(self.client.connection_pool).take()
            once, meanwhile = meanwhile, None
            try:
                if plain:
                    results.append(_run_on(self.connection, name, keys, args, once))
                else:
                    results.append(run(self.client, name, keys, args, once))
            except ResponseError as error:  # an answer (RedisOutOfMemory is one)
                results.append(error)
            except BaseException:
                self.release()
                raise
        return results

    def release(self) -> None:
        if self.connection is not None:
            connection, self.connection = self.connection, None
            SpareConnections.of(self.client.connection_pool).give_back(connection)


async def arun(
    client: redis.asyncio.Redis, name: str, keys: Sequence[str], args: Sequence[Arg]
) -> Any:
    text, sha = source(name)
    try:
        try:
            return await client.evalsha(sha, len(keys), *keys, *args)
        except NoScriptError:
            await client.script_load(text)
            return await client.evalsha(sha, len(keys), *keys, *args)
    except OutOfMemoryError as error:
        raise out_of_memory(name, error) from error


def run_for_queue(
    client: redis.Redis,
    qualified: str,
    name: str,
    keys: Sequence[str],
    args: Sequence[Arg],
    also: Callable[[], Mapping[str, str]] | None = None,
) -> Any:
    """`run` of a script of queue `qualified`, whose refusal because one of the queue's
    keys (or of the keys `also()` gives, with what TYPE says of each: a job's own) holds
    another client's value is raised as `ForeignKeyValue`, naming the key (see
    `foreign_value_error`; the scripts check before their first write)."""
    try:
        return run(client, name, keys, args)
    except ResponseError as error:
        more = also() if also else None
        raise_foreign_value(client, [qualified], error, f"{name}: ", also=more)
        raise


async def arun_for_queue(
    client: redis.asyncio.Redis,
    lookup: redis.Redis,
    qualified: str,
    name: str,
    keys: Sequence[str],
    args: Sequence[Arg],
    also: Callable[[], Mapping[str, str]] | None = None,
) -> Any:
    """`run_for_queue` with `arun`; the keys are looked up with the sync client `lookup`,
    on a thread, so the loop goes on."""
    try:
        return await arun(client, name, keys, args)
    except ResponseError as error:
        more = also() if also else None
        await asyncio.to_thread(
            raise_foreign_value, lookup, [qualified], error, f"{name}: ", "", more
        )
        raise


def queue_in_pipeline(pipe: Any, name: str, keys: Sequence[str], args: Sequence[Arg]) -> None:
    """Adds an EVALSHA to a pipeline (sync or async); see `fix_noscript_results`."""
    pipe.evalsha(source(name)[1], len(keys), *keys, *args)


def load_all(client: redis.Redis) -> None:
    for name in script_names():
        client.script_load(source(name)[0])


async def aload_all(client: redis.asyncio.Redis) -> None:
    for name in script_names():
        await client.script_load(source(name)[0])


def has_noscript(results: Sequence[Any]) -> bool:
    return any(_is_noscript(r) for r in results if isinstance(r, BaseException))


Call = tuple[str, Sequence[str], Sequence[Arg]]


def run_many(client: redis.Redis, calls: Sequence[Call]) -> list[Any]:
    """Runs several scripts in one round trip; errors come back as exception objects."""
    results = _pipeline(client, calls)
    if has_noscript(results):
        load_all(client)
        retry = [
            i for i, r in enumerate(results) if isinstance(r, BaseException) and _is_noscript(r)
        ]
        for i, value in zip(retry, _pipeline(client, [calls[i] for i in retry]), strict=True):
            results[i] = value
    return results


def _pipeline(client: redis.Redis, calls: Sequence[Call]) -> list[Any]:
    pipe = client.pipeline(transaction=False)
    for name, keys, args in calls:
        queue_in_pipeline(pipe, name, keys, args)
    return pipe.execute(raise_on_error=False)


@cache
def _packed_head(name: str, total: int, numkeys: int) -> bytes:
    return b"*%d\r\n" % total + _bulks((b"EVALSHA", source(name)[1], numkeys))


def pack_call(name: str, keys: Sequence[str], args: Sequence[Arg]) -> bytes:
    """The RESP bytes of one EVALSHA, built directly (redis-py's generic packer costs
    more than the script itself on the worker's hot path)."""
    return _packed_head(name, 3 + len(keys) + len(args), len(keys)) + _bulks((*keys, *args))


async def run_on_connection(lane: Lane, calls: Sequence[Call]) -> list[Any]:
    """Runs several scripts in one round trip on a lane's connection; errors come back
    as exception objects. A broken connection is closed and the error raised, and so is
    one that has not answered within the lane's deadline (RedisTimeoutError)."""
    connection = lane.connection
    lane.begin()
    try:
        payload = b"".join(pack_call(*call) for call in calls)
        writer = connection._writer
        if writer is None or writer.transport.is_closing():
            # not connected (or closing): redis-py's send connects (within the batch's
            # deadline: its retries could outlast it), or names the fault
            try:
                async with asyncio.timeout_at(lane.due):
                    await connection.send_packed_command(payload, check_health=False)
            except TimeoutError:
                lane.timed_out = True
                raise
        else:
            writer.write(payload)
        # answers straight from the connection's parser, as they are: an error reply is
        # a ResponseError object, not raised. redis-py's read_response around it (a
        # timer per answer, the host named for a message that may never be written,
        # raising and catching the error replies) cost the async worker's round trip a
        # tenth of its CPU; the lane's deadline and the except below do its work here.
        read = connection._parser.read_response
        results = [await read() for _ in calls]
    except BaseException as error:
        await connection.disconnect()
        if lane.timed_out:
            raise RedisTimeoutError(f"no answer from Redis within {lane.deadline}s") from error
        if isinstance(error, OSError):
            raise RedisConnectionError(f"lost the connection to Redis: {error}") from error
        raise
    finally:
        lane.end()
    if has_noscript(results):
        for name in script_names():
            await connection.send_command("SCRIPT", "LOAD", source(name)[0])
            await connection.read_response()
        retry = [
            i for i, r in enumerate(results) if isinstance(r, BaseException) and _is_noscript(r)
        ]
        redone = await run_on_connection(lane, [calls[i] for i in retry])
        for i, value in zip(retry, redone, strict=True):
            results[i] = value
    return results


class Lane:
    """A dedicated pooled connection that runs batches of script calls. Its socket
    timeout becomes the deadline of each whole batch (redis-py would otherwise arm a
    timer for the write and one for every answer); `release` gives it back as it was.

    The deadline is watched by one timer that is not re-armed per batch: a batch moves
    the lane's due time, and the timer, when it fires, follows the due time of the batch
    in flight or, past it, aborts the connection (the batch's read then fails, and is
    reported as timed out). Arming and cancelling a timer for every batch cost a
    one-job round trip 3% of the async worker's CPU."""

    def __init__(self, connection: Any) -> None:
        self.connection = connection
        self.deadline = connection.socket_timeout
        connection.socket_timeout = None
        self.due: float | None = None  # loop time by which the batch in flight is answered
        self.timed_out = False
        self._timer: asyncio.TimerHandle | None = None

    def begin(self) -> None:
        self.timed_out = False
        if self.deadline is None:
            return
        loop = asyncio.get_running_loop()
        self.due = loop.time() + self.deadline
        if self._timer is None:
            self._timer = loop.call_at(self.due, self._check, loop)

    def end(self) -> None:
        self.due = None

    def _check(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer = None
        if self.due is None:
            return  # idle: the next batch arms it again
        if loop.time() < self.due:
            self._timer = loop.call_at(self.due, self._check, loop)
            return
        self.timed_out = True
        writer = self.connection._writer
        if writer is not None:
            writer.transport.abort()
        else:  # still connecting: cut as soon as it is connected, should it ever be
            self._timer = loop.call_at(loop.time() + 0.05, self._check, loop)

    async def release(self, pool: Any) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.connection.socket_timeout = self.deadline
        await pool.release(self.connection)


class ClusterLane:
    """Stands in for a dedicated connection on Redis Cluster, where connections belong
    to nodes and redis-py refuses EVALSHA in cluster pipelines: a lane runs its calls
    one after the other (in order, each atomic as everywhere)."""

    def __init__(self, client: Any) -> None:
        self.client = client


async def run_on_lane(lane: Any, calls: Sequence[Call]) -> list[Any]:
    """`run_on_connection` for a `Lane` or a `ClusterLane`."""
    if isinstance(lane, Lane):
        return await run_on_connection(lane, calls)
    results: list[Any] = []
    for name, keys, args in calls:
        try:
            results.append(await arun(lane.client, name, keys, args))
        except ResponseError as error:
            results.append(error)
    return results
