"""scripts.Lane: the pooled asyncio connection the worker's event loop records finished
jobs on, a batch of script calls per round trip, under one deadline per batch that a
single timer per lane watches."""

from __future__ import annotations

import asyncio
import socket
import time

import pytest
import redis

from flowjobs.engine import scripts
from flowjobs.engine.connection import async_client
from tests.helpers import client_id_of


def _fetch(queue, token: str) -> scripts.Call:
    args = [queue.keys.qualified, 0, 30_000, "", "", "", token]
    return ("move_to_active", [queue.keys.meta], args)


def _on_lane(url: str, body) -> object:
    """Runs `body(lane)` on a fresh lane of a fresh asyncio client of `url`."""

    async def main():
        client = async_client(url)
        pool = client.connection_pool
        lane = scripts.Lane(await pool.get_connection())
        try:
            return await body(lane)
        finally:
            await lane.release(pool)
            await client.aclose()

    return asyncio.run(main())


def test_batches_answered_in_time_never_time_out_however_long_the_lane_runs(queue, redis_url):
    """The one timer follows the due time of each batch: a lane busy for longer than its
    deadline, batch after batch, is not cut."""
    for n in range(3):
        queue.add("x", {"n": n})

    async def body(lane):
        assert lane.deadline == 0.2
        taken, started = 0, time.monotonic()
        while time.monotonic() - started < 0.8:  # four deadlines' worth of batches
            result = (await scripts.run_on_lane(lane, [_fetch(queue, f"t:{taken}")]))[0]
            taken += bool(result[0])
        return taken

    assert _on_lane(f"{redis_url}?socket_timeout=0.2", body) == 3


def test_a_silent_connection_times_out_at_the_deadline_and_the_next_batch_reconnects(queue, proxy):
    queue.add("x", {"n": 1})

    async def body(lane):
        await scripts.run_on_lane(lane, [_fetch(queue, "t:0")])  # connected, scripts known
        proxy.hold()  # Redis goes silent: no answer, no FIN, no RST
        started = time.monotonic()
        with pytest.raises(redis.TimeoutError, match="no answer from Redis within 0.3s"):
            await scripts.run_on_lane(lane, [_fetch(queue, "t:1")])
        waited = time.monotonic() - started
        assert lane.connection._writer is None  # closed: a late answer cannot be misread
        proxy.restore()
        again = await scripts.run_on_lane(lane, [_fetch(queue, "t:2")])
        return waited, again

    waited, again = _on_lane(f"{proxy.url}?socket_timeout=0.3", body)
    assert 0.3 <= waited < 2.0
    # the held fetch may have reached Redis and taken the job; either way an answer came
    assert isinstance(again[0], list)


def test_a_reconnect_that_gets_no_answer_times_out_at_the_deadline(queue, proxy):
    """A lane whose connection broke connects again within its next batch; when Redis
    does not answer the connection's handshake, the batch still ends at its deadline."""

    async def body(lane):
        await scripts.run_on_lane(lane, [_fetch(queue, "t:0")])
        await lane.connection.disconnect()
        proxy.hold()  # the new connection is accepted, and then nothing is answered
        started = time.monotonic()
        with pytest.raises(redis.TimeoutError, match="no answer from Redis within 0.3s"):
            # (the outer bound only turns a hang into a failure)
            await asyncio.wait_for(scripts.run_on_lane(lane, [_fetch(queue, "t:1")]), 10)
        return time.monotonic() - started

    assert _on_lane(f"{proxy.url}?socket_timeout=0.3", body) < 2.0


def test_a_reconnect_whose_tcp_connect_hangs_times_out_at_the_deadline(queue, redis_url):
    """The TCP connect itself can hang (its SYNs dropped: a host gone, a full listen
    queue); the batch still ends at its deadline, not after redis-py's connect retries."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)  # one connection fills its queue, and nothing accepts
    filler = socket.create_connection(listener.getsockname(), timeout=5)

    async def body(lane):
        await scripts.run_on_lane(lane, [_fetch(queue, "t:0")])
        await lane.connection.disconnect()
        lane.connection.host, lane.connection.port = listener.getsockname()
        started = time.monotonic()
        with pytest.raises(redis.TimeoutError, match="no answer from Redis within 0.3s"):
            await asyncio.wait_for(scripts.run_on_lane(lane, [_fetch(queue, "t:1")]), 20)
        return time.monotonic() - started

    try:
        assert _on_lane(f"{redis_url}?socket_timeout=0.3", body) < 1.0
    finally:
        filler.close()
        listener.close()


@pytest.mark.parametrize("protocol", ["2", "3"])
def test_error_replies_are_answers_and_the_connection_stays(queue, redis_url, protocol):
    """(On RESP2 and RESP3: the answers are read from the connection's parser.)"""
    queue.add("x", {"n": 1})

    async def body(lane):
        held = lane.connection
        results = await scripts.run_on_lane(
            lane, [("move_to_active", [queue.keys.meta], []), _fetch(queue, "t:0")]
        )
        return held, lane.connection, results

    held, after, results = _on_lane(f"{redis_url}?protocol={protocol}", body)
    assert isinstance(results[0], redis.ResponseError)
    assert results[1][0], results  # the call after the refused one ran and took the job
    assert after is held


def test_a_connection_the_server_closed_is_raised_and_reconnected(queue, redis_url, redis_client):
    async def body(lane):
        await scripts.run_on_lane(lane, [_fetch(queue, "t:0")])
        redis_client.client_kill_filter(_id=client_id_of(redis_client, lane.connection))
        with pytest.raises(redis.ConnectionError):
            await scripts.run_on_lane(lane, [_fetch(queue, "t:1")])
        assert not lane.timed_out
        queue.add("x", {"n": 1})
        return await scripts.run_on_lane(lane, [_fetch(queue, "t:2")])

    assert _on_lane(redis_url, body)[0][0]


def test_scripts_flushed_from_redis_are_loaded_again(queue, redis_url, redis_client):
    queue.add("x", {"n": 1})

    async def body(lane):
        await scripts.run_on_lane(lane, [_fetch(queue, "t:0")])
        redis_client.script_flush()
        queue.add("y", {"n": 2})
        return await scripts.run_on_lane(lane, [_fetch(queue, "t:1")])

    assert _on_lane(redis_url, body)[0][0]
