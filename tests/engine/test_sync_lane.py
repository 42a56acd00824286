"""scripts.SyncLane: the run of script calls a worker thread makes on one pooled
connection it holds (the direct lane of a worker at concurrency 1)."""

from __future__ import annotations

import pytest
import redis

from flowjobs.engine import scripts
from flowjobs.engine.connection import sync_client
from tests.helpers import client_id_of


def _fetch(queue) -> scripts.Call:
    args = [queue.keys.qualified, 0, 30_000, "", "", "", "lane-test:1"]
    return ("move_to_active", [queue.keys.meta], args)


def test_a_lane_holds_one_connection_until_released(queue, redis_url):
    client = sync_client(redis_url)
    pool = client.connection_pool
    lane = scripts.SyncLane(client)
    try:
        queue.add("x", {"n": 1})
        first = lane.run_calls([_fetch(queue)])
        held = lane.connection
        assert first[0][0], first  # the job was taken
        assert lane.run_calls([_fetch(queue)])[0][0] == []  # nothing left, same lane
        assert lane.connection is held and held in pool._in_use_connections
        # a script's error is an answer, not a fault of the lane: it keeps its connection
        bad = lane.run_calls([("move_to_active", [queue.keys.meta], [])])
        assert isinstance(bad[0], redis.ResponseError)
        assert lane.connection is held
    finally:
        lane.release()
    # given back as a spare script connection (test_spare_connections.py)
    assert lane.connection is None and held in scripts.SpareConnections.of(pool).idle
    client.close()


def test_a_broken_connection_is_given_back_and_raised(queue, redis_url, redis_client):
    client = sync_client(redis_url)
    lane = scripts.SyncLane(client)
    lane.run_calls([_fetch(queue)])
    held = lane.connection
    redis_client.client_kill_filter(_id=client_id_of(redis_client, held))
    with pytest.raises(redis.ConnectionError):
        lane.run_calls([_fetch(queue)])
    assert lane.connection is None and held._sock is None  # closed, not kept open
    # the next call runs on a live connection
    assert lane.run_calls([_fetch(queue)])[0][0] == []
    lane.release()
    client.close()
