"""One set of input rules for names and ids, enforced before anything is written: no
control characters, lengths the SQL mirror's columns hold. What Node.js BullMQ itself
refuses (":" in queue names, integer custom ids) stays refused; jobs a foreign producer
wrote are processed whatever their ids look like."""

from __future__ import annotations

import pytest

from flowjobs.engine import (
    Flow,
    FlowProducer,
    InvalidJobOptions,
    InvalidQueueName,
    Queue,
    QueueEvents,
    Worker,
)
from flowjobs.engine.keys import MAX_JOB_ID_LENGTH, MAX_PREFIX_LENGTH, MAX_QUEUE_NAME_LENGTH
from tests.helpers import wait_for

BAD_QUEUE_NAMES = [
    "nul\x00inside",
    "new\nline",
    "tab\there",
    "del\x7f",
    "x" * (MAX_QUEUE_NAME_LENGTH + 1),
    "x" * 100_000,
    "with:colon",
    "",
]
BAD_JOB_IDS = [
    "nul\x00inside",
    "line\nbreak",
    "x" * (MAX_JOB_ID_LENGTH + 1),
    "12",
    "a:b",
]


@pytest.mark.parametrize("name", BAD_QUEUE_NAMES, ids=lambda n: repr(n[:20]))
def test_bad_queue_names_are_refused_everywhere(redis_url, prefix, name):
    for make in (
        lambda: Queue(name, connection=redis_url, prefix=prefix),
        lambda: Worker(name, lambda job: None, connection=redis_url, prefix=prefix),
        lambda: QueueEvents(name, connection=redis_url, prefix=prefix, autorun=False),
        lambda: FlowProducer(connection=redis_url, prefix=prefix).add(Flow("j", name)),
    ):
        with pytest.raises(InvalidQueueName):
            make()


@pytest.mark.parametrize("bad", ["p\x00", "p" * (MAX_PREFIX_LENGTH + 1), "a:b"])
def test_bad_prefixes_are_refused(redis_url, bad):
    with pytest.raises(InvalidQueueName, match="prefix"):
        Queue("q", connection=redis_url, prefix=bad)


@pytest.mark.parametrize("job_id", BAD_JOB_IDS, ids=lambda n: repr(n[:20]))
def test_bad_job_ids_are_refused_before_any_write(queue, redis_client, prefix, job_id):
    with pytest.raises(InvalidJobOptions, match="job_id"):
        queue.add("j", {}, job_id=job_id)
    with pytest.raises(InvalidJobOptions, match="job_id"):
        queue.add_bulk([{"name": "ok"}, {"name": "j", "opts": {"job_id": job_id}}])
    assert redis_client.keys(f"{prefix}:*") == []


def test_the_longest_names_and_ids_are_accepted(redis_url, redis_client):
    long_prefix = "p" * MAX_PREFIX_LENGTH
    queue = Queue("q" * MAX_QUEUE_NAME_LENGTH, connection=redis_url, prefix=long_prefix)
    try:
        job = queue.add("j", {}, job_id="i" * MAX_JOB_ID_LENGTH)
        assert queue.get_job(job.id).id == "i" * MAX_JOB_ID_LENGTH
        assert queue.add("j", {}, job_id="repeat:scheduler:1").id == "repeat:scheduler:1"
    finally:
        queue.obliterate(force=True)
        queue.close()


def test_foreign_ids_outside_our_rules_are_still_processed(queue, redis_url, prefix):
    """A Node.js producer may write ids we would refuse (control characters, any
    length): a flowjobs worker processes them all the same."""
    foreign = ["tab\there", "x" * 400, "nul\x00id"]
    pipe = queue.client.pipeline(transaction=True)
    for job_id in foreign:
        pipe.hset(
            queue.keys.job(job_id),
            mapping={"name": "n", "data": "{}", "opts": "{}", "timestamp": 1},
        )
        pipe.lpush(queue.keys.key("wait"), job_id)
    pipe.zadd(queue.keys.marker, {"0": 0})
    pipe.execute()
    worker = Worker("q", lambda job: len(job.id), connection=redis_url, prefix=prefix)
    try:
        wait_for(
            lambda: all(queue.get_job_state(job_id) == "completed" for job_id in foreign),
            timeout=15,
            message=str(queue.get_job_counts()),
        )
    finally:
        worker.close(timeout=10)
    assert [queue.get_job(job_id).returnvalue for job_id in foreign] == [8, 400, 6]
