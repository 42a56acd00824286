"""Finding queues costs Redis a keyspace scan; the mirror keeps that cost small.

A deployment that keeps its finished jobs has a key per job, and a SCAN pass over a
million keys blocks Redis for about a second in all: every MIRROR_DISCOVER_INTERVAL
(5 s) that would be a fifth of the server's time, taken from the workers.
"""

from __future__ import annotations

import pytest
import redis

from flowjobs import mirror
from tests.helpers import wait_for

pytestmark = pytest.mark.django_db(transaction=True)

_FILL = """
for i = 1, tonumber(ARGV[2]) do redis.call('SET', ARGV[1] .. i, '') end
return 0
"""


def _fill(client: redis.Redis, prefix: str, count: int) -> None:
    """``count`` keys under the prefix that are no queue's (as finished jobs' keys are not)."""
    for start in range(0, count, 50_000):
        client.eval(_FILL, 0, f"{prefix}:filler:{start}:", min(50_000, count - start))


def _scans(client: redis.Redis) -> int:
    return int(client.info("commandstats").get("cmdstat_scan", {}).get("calls", 0))


def test_one_discovery_walks_the_keyspace_once(rclient, prefix, make_queue):
    make_queue("alpha").add("job", {})  # meta + events
    make_queue("beta").pause()  # meta only
    rclient.xadd(f"{prefix}:gamma:events", {"event": "x"})  # events only (a foreign producer)
    _fill(rclient, prefix, 20_000)

    before = _scans(rclient)
    for _ in rclient.scan_iter(match=f"{prefix}:*", count=1000):
        pass
    one_pass = _scans(rclient) - before

    before = _scans(rclient)
    found = mirror.discover_queues(rclient, prefix)
    used = _scans(rclient) - before
    assert found == ["alpha", "beta", "gamma"]
    assert used <= one_pass, (
        f"discovery took {used} SCAN calls; one pass over the keys is {one_pass}"
    )


def test_keys_that_only_look_like_queue_keys_are_not_queues(rclient, prefix):
    for key in ("q:meta-data", "q:eventsx", "q:7:events", "q:metrics:completed", ":events"):
        rclient.set(f"{prefix}:{key}", "")
    rclient.hset(f"{prefix}:real:meta", "paused", "1")
    assert mirror.discover_queues(rclient, prefix) == ["real"]


def test_the_mirror_spends_at_most_a_small_share_of_its_time_discovering(
    rclient, prefix, make_queue, make_projector
):
    make_queue("early").add("job", {})
    _fill(rclient, prefix, 40_000)
    projector = make_projector(discover_interval=0)

    before = _scans(rclient)
    projector.discover()
    assert _scans(rclient) > before
    assert set(projector.streams) == {f"{prefix}:early:events"}
    # With no interval of its own, a pass is followed by a pause a hundred times its
    # length: right after one, no other starts.
    before = _scans(rclient)
    for _ in range(5):
        projector.discover()
    assert _scans(rclient) == before, "a second full scan started right after the first"

    make_queue("late").add("job", {})

    def found_late() -> bool:
        projector.discover()
        return f"{prefix}:late:events" in projector.streams

    wait_for(found_late, timeout=60, message="the queue made later discovered")
