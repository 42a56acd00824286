"""Another client's value at a queue key, one key after another, while a producer adds
plain jobs, flows, deduplicated, delayed and prioritized jobs and two workers run them (one
queue has a job scheduler): each key holds a value of the wrong kind for a while, then
gets its own value back (Redis DUMP / RESTORE: the scripts wrote nothing to it meanwhile).
Every job added must complete exactly once, and no worker may stop."""

from __future__ import annotations

import collections
import threading

import pytest
import redis

from flowjobs.engine import Flow, FlowJobsError
from tests.helpers import wait_for

pytestmark = pytest.mark.chaos

# the keys of queue "q" (jobs, flow parents, the scheduler) and of "c" (flow children)
KEYS_OF_Q = (
    "wait",
    "active",
    "prioritized",
    "delayed",
    "completed",
    "events",
    "marker",
    "stalled",
    "meta",
    "id",
    "repeat",
    "repeat:s1",
)
KEYS_OF_C = ("wait", "active", "completed")
ADDS_PER_KEY = 12  # adds attempted while a key is foreign
# The key's value (DUMP), replaced by one of another kind; and the value put back.
SWAP_IN_FOREIGN_VALUE = """
local kind = redis.call("TYPE", KEYS[1])["ok"]
local value = false
if kind ~= "none" then value = redis.call("DUMP", KEYS[1]) end
redis.call("DEL", KEYS[1])
if kind == "string" then
  redis.call("HSET", KEYS[1], "another", "client")
else
  redis.call("SET", KEYS[1], "another client's value")
end
return value
"""
PUT_BACK = """
redis.call("DEL", KEYS[1])
if ARGV[1] ~= "" then redis.call("RESTORE", KEYS[1], 0, ARGV[1]) end
"""


class Producer(threading.Thread):
    """Adds jobs with ids until stopped; an add that is refused is tried again with the
    same id (the refusal wrote nothing), so every id it counts was added once."""

    def __init__(self, queue, flow_producer) -> None:  # noqa: ANN001
        super().__init__(daemon=True)
        self.queue, self.flow_producer = queue, flow_producer
        self.added: dict[str, set[str]] = {"q": set(), "c": set()}
        self.attempts = 0
        self.refusals: collections.Counter[str] = collections.Counter()
        self.stop = threading.Event()
        self.lock = threading.Lock()

    def run(self) -> None:
        n = 0
        while not self.stop.is_set():
            n += 1
            while not self.stop.is_set():
                self.attempts += 1
                try:
                    self._add(n)
                    break
                except (FlowJobsError, redis.RedisError) as error:
                    self.refusals[type(error).__name__] += 1
                    self.stop.wait(0.01)  # not a synchronisation: a producer's pace

    def _add(self, n: int) -> None:
        job_id = f"j{n}"
        kind = n % 4
        if kind == 1:
            children = [
                Flow("child", "c", {"i": i}, opts={"job_id": f"{job_id}-{i}"}) for i in (0, 1)
            ]
            self.flow_producer.add(
                Flow("parent", "q", {"n": n}, children=children, opts={"job_id": job_id})
            )
            with self.lock:
                self.added["q"].add(job_id)
                self.added["c"].update(f"{job_id}-{i}" for i in (0, 1))
            return
        if kind == 0:
            self.queue.add("plain", {"n": n}, job_id=job_id)
        elif kind == 2:
            self.queue.add("dedup", {"n": n}, job_id=job_id, deduplication={"id": f"d{n}"})
        else:
            self.queue.add("later", {"n": n}, job_id=job_id, delay=n % 7 * 20, priority=n % 3)
        with self.lock:
            self.added["q"].add(job_id)


def test_foreign_values_at_queue_keys_under_load_lose_no_job_and_run_none_twice(
    make_queue, make_worker, flow_producer, redis_client, redis_url, prefix, report
):
    queue, children = make_queue("q"), make_queue("c")
    runs: collections.Counter[tuple[str, str]] = collections.Counter()
    errors: list[str] = []

    def processor(job):  # noqa: ANN001, ANN202
        runs[(job.queue.name, job.id)] += 1
        return job.id

    workers = [
        make_worker(name, processor, autorun=False, concurrency=8, stalled_interval=500)
        for name in ("q", "c")
    ]
    for worker in workers:
        worker.on("error", lambda error: errors.append(str(error)))
        worker.start()
    queue.upsert_job_scheduler("s1", every=300)
    producer = Producer(queue, flow_producer)
    producer.start()
    wait_for(lambda: len(producer.added["q"]) > 40)
    a_parent = next(iter(redis_client.scan_iter(f"{prefix}:q:j*:dependencies")), None)
    keys = [f"{prefix}:q:{suffix}" for suffix in KEYS_OF_Q]
    keys += [f"{prefix}:c:{suffix}" for suffix in KEYS_OF_C]
    keys += [a_parent] if a_parent else []
    raw = redis.Redis.from_url(redis_url)  # DUMP's bytes are not text
    for key in keys:
        # in one step, or a job written between the DUMP and the DEL would be lost by us
        value = raw.eval(SWAP_IN_FOREIGN_VALUE, 1, key)
        until = producer.attempts + ADDS_PER_KEY
        wait_for(lambda until=until: producer.attempts >= until, timeout=20)
        raw.eval(PUT_BACK, 1, key, value or b"")
    raw.close()
    producer.stop.set()
    producer.join(timeout=10)
    queue.remove_job_scheduler("s1")

    def missing() -> list[tuple[str, str, str]]:
        """(queue, id, state) of the jobs added and not completed."""
        left = []
        for name, added in producer.added.items():
            done = set(redis_client.zrange(f"{prefix}:{name}:completed", 0, -1))
            of = queue if name == "q" else children
            left += [(name, job_id, of.get_job_state(job_id)) for job_id in sorted(added - done)]
        return left

    try:
        wait_for(lambda: not missing(), timeout=30)
    except AssertionError:
        raise AssertionError(f"jobs not completed (queue, id, state): {missing()[:10]}") from None
    twice = sorted(job for job, count in runs.items() if count > 1 and "repeat:" not in job[1])
    assert twice == [], twice
    assert redis_client.zcard(f"{prefix}:q:failed") == 0
    assert redis_client.zcard(f"{prefix}:c:failed") == 0
    assert all(worker.is_running() for worker in workers)
    report("jobs added", sum(len(added) for added in producer.added.values()))
    report("refused adds", sum(producer.refusals.values()))
    report("worker errors", len(errors))
    for worker in workers:
        worker.close()
