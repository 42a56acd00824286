"""scripts.SpareConnections: the connections a pool's script calls keep aside instead of
taking one from redis-py's pool and giving it back on every call."""

from __future__ import annotations

import os

import pytest
import redis

from flowjobs.engine import Queue, scripts
from flowjobs.engine.connection import sync_client
from tests.helpers import client_id_of


def _spare(queue: Queue) -> scripts.SpareConnections:
    return scripts.SpareConnections.of(queue.client.connection_pool)


def test_adds_one_after_another_use_one_connection(queue):
    for n in range(20):
        queue.add("x", {"n": n})
    (kept,) = _spare(queue).idle
    assert queue.get_job_counts("waiting") == {"waiting": 20}
    assert _spare(queue).idle == [kept]  # other commands went through the pool


def test_a_kept_connection_the_server_closed_is_not_used_for_the_next_call(queue, redis_client):
    """A restart or an idle timeout closes the kept connection meanwhile: the next add
    must run on a new one, not fail with the closed one."""
    queue.add("x", {"n": 1})
    (kept,) = _spare(queue).idle
    redis_client.client_kill_filter(_id=client_id_of(redis_client, kept))
    job = queue.add("x", {"n": 2})
    assert queue.get_job(job.id).data == {"n": 2}


# the test process has threads of its own (pytest-xdist's); the child only adds a job
@pytest.mark.filterwarnings("ignore:This process .* fork:DeprecationWarning")
def test_a_forked_child_never_uses_its_parent_s_connection(queue):
    queue.add("x", {"n": 1})
    (kept,) = _spare(queue).idle
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: a new connection of its own, the parent's left alone
        try:
            queue.add("x", {"n": 2})
            (own,) = _spare(queue).idle
            os.write(write, b"ok" if own is not kept else b"shared")
        finally:
            os._exit(0)
    os.close(write)
    _, status = os.waitpid(pid, 0)
    assert os.read(read, 10) == b"ok" and status == 0
    os.close(read)
    queue.add("x", {"n": 3})  # the parent's connection still answers its own calls
    assert _spare(queue).idle == [kept]
    assert queue.get_job_counts("waiting") == {"waiting": 3}


def test_at_most_a_quarter_of_a_limited_pool_is_kept(redis_url):
    """Kept connections count as in use for the pool: the rest stay for everyone."""
    client = redis.Redis.from_url(redis_url, max_connections=8)
    spare = scripts.SpareConnections.of(client.connection_pool)
    taken = [spare.take() for _ in range(8)]
    for connection in taken:
        spare.give_back(connection)
    assert len(spare.idle) == 2
    others = [client.connection_pool.get_connection() for _ in range(6)]  # no "Too many"
    for connection in others:
        client.connection_pool.release(connection)
    client.close()


def test_a_blocking_pool_gets_every_connection_back(redis_url, prefix):
    """A BlockingConnectionPool's other callers wait for a connection: none is kept."""
    pool = redis.BlockingConnectionPool.from_url(redis_url, max_connections=1, timeout=2)
    client = redis.Redis(connection_pool=pool)
    queue = Queue("q", connection=client, prefix=prefix)
    queue.add("x", {"n": 1})
    assert scripts.SpareConnections.of(pool).idle == []
    assert client.ping()  # would wait 2 s and fail if the add had kept the connection
    client.close()


def test_a_call_interrupted_mid_answer_does_not_leave_its_answer_to_the_next(redis_url):
    """A call cut off after its send (a timeout here) is not given back as it is: its
    late answer would be read as the next call's."""
    client = sync_client(redis_url, socket_timeout=0.2)
    admin = redis.Redis.from_url(redis_url)
    spare = scripts.SpareConnections.of(client.connection_pool)
    scripts.run(client, "add_jobs", ["flowjobs-test:spare:meta"], [0])
    (kept,) = spare.idle
    admin.client_pause(600)  # ends by itself
    try:
        scripts.run(client, "add_jobs", ["flowjobs-test:spare:meta"], [0])
    except redis.TimeoutError:
        pass
    else:
        raise AssertionError("the paused server answered")
    assert kept._sock is None  # closed: the late answer went with it
    admin.ping()  # answered once the pause is over
    assert scripts.run(client, "add_jobs", ["flowjobs-test:spare:meta"], [0]) == [0]
    client.close()
    admin.close()


def test_hgetall_many_reads_each_hash_as_a_pipeline_would(redis_url, prefix, redis_client):
    """The mirror's hash reads, packed directly: the same answers as redis-py's pipeline
    (a missing key is an empty dict), on a kept connection."""
    redis_client.hset(f"{prefix}:a", mapping={"name": "x", "data": "{}"})
    redis_client.hset(f"{prefix}:c", mapping={"n": "3"})
    keys = [f"{prefix}:a", f"{prefix}:b", f"{prefix}:c"]
    client = sync_client(redis_url)
    single = sync_client(redis_url, single_connection_client=True)  # the pipeline's path
    try:
        expected = [{"name": "x", "data": "{}"}, {}, {"n": "3"}]
        assert scripts.hgetall_many(client, keys) == expected
        assert scripts.hgetall_many(single, keys) == expected
        assert len(scripts.SpareConnections.of(client.connection_pool).idle) == 1
        assert scripts.hgetall_many(client, []) == []
    finally:
        client.close()
        single.close()


def test_hgetall_many_raises_a_refusal_after_reading_every_answer(redis_url, prefix, redis_client):
    """A key that is not a hash is refused (WRONGTYPE). The answers after it are read
    all the same, so the kept connection is in step for the next call."""
    redis_client.set(f"{prefix}:text", "not a hash")
    redis_client.hset(f"{prefix}:h", "f", "v")
    client = sync_client(redis_url)
    try:
        with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
            scripts.hgetall_many(client, [f"{prefix}:text", f"{prefix}:h"])
        (kept,) = scripts.SpareConnections.of(client.connection_pool).idle
        assert kept._sock is not None
        assert scripts.hgetall_many(client, [f"{prefix}:h"]) == [{"f": "v"}]
    finally:
        client.close()


def test_an_asyncio_client_built_from_a_client_object_keeps_its_retry_without_a_warning(
    redis_url,
):
    """A worker given a redis.Redis builds its asyncio clients from it. The given client's
    retry policy (a synchronous Retry, redis-py's default included) becomes the asyncio
    one with the same backoff, count and error check, and redis-py 8 warns at every worker start
    when it has to convert it itself."""
    import asyncio
    import warnings

    from redis.backoff import ConstantBackoff

    from flowjobs.engine.connection import async_client

    def checks(error: Exception) -> bool:
        return True

    policy = redis.retry.Retry(ConstantBackoff(0.01), 4)
    if hasattr(policy, "is_retryable"):  # redis-py 8
        policy.is_retryable = checks
    given = redis.Redis.from_url(redis_url, retry=policy)

    async def build_and_ping():
        client = async_client(given)
        try:
            assert await client.ping()
            return client.connection_pool.connection_kwargs["retry"]
        finally:
            await client.aclose()

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        retry = asyncio.run(build_and_ping())
    given.close()
    assert isinstance(retry, redis.asyncio.retry.Retry)
    assert retry.get_retries() == 4
    assert getattr(retry, "is_retryable", checks) is checks  # its own check, kept
