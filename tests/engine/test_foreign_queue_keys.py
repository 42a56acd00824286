"""A queue key that holds the wrong kind of value (another client wrote a string where the
queue keeps a sorted set): the script that meets it refuses before writing, with an error
that names the key, and the job it was moving is not lost."""

from __future__ import annotations

import asyncio
import threading

import pytest
import redis

from flowjobs.engine import ForeignKeyValue
from flowjobs.engine import worker as worker_module
from tests.helpers import wait_for


def _first_error(make_worker, processor, errors: list[str], what: str):  # noqa: ANN001, ANN202
    """A started worker with short locks (the stalled check soon runs a job again) whose
    errors go to `errors`, once the first arrived."""
    worker = make_worker("q", processor, autorun=False, lock_duration=1500, stalled_interval=300)
    worker.on("error", lambda error: errors.append(str(error)))
    worker.start()
    wait_for(lambda: errors, message=f"no error for {what}")
    return worker


def _turning_foreign(client: redis.Redis, key: str, runs: list[str], failure: str = ""):  # noqa: ANN202
    """A processor that, on its first run, puts another client's value at `key` (SET
    replaces the queue's own, whatever its type) and raises ValueError(`failure`) if
    given; every run is noted in `runs`, and later runs return "done"."""

    def processor(job):  # noqa: ANN001, ANN202
        runs.append(job.id)
        if len(runs) == 1:
            client.set(key, "another client's value")
            if failure:
                raise ValueError(failure)
        return "done"

    return processor


@pytest.mark.parametrize(
    ("destination", "backoff"), [("delayed", {"type": "fixed", "delay": 50}), ("wait", None)]
)
def test_a_retry_refused_by_a_foreign_value_leaves_the_job_active(
    destination, backoff, queue, make_worker, redis_client, prefix
):
    """A failed attempt that is retried goes to `delayed` (with a backoff) or back to
    `wait`; a foreign value there (written while the job ran) refuses the move before
    anything is written: the job stays active, its attempt not counted, and runs again
    once the key is mended."""
    foreign_key = f"{prefix}:q:{destination}"
    job = queue.add("x", {"n": 1}, attempts=3, backoff=backoff)
    errors: list[str] = []
    runs: list[str] = []
    processor = _turning_foreign(redis_client, foreign_key, runs, "the first attempt fails")
    worker = _first_error(make_worker, processor, errors, "the refused retry")
    assert f"{foreign_key} holds a string" in errors[0], errors[0]
    assert redis_client.lrange(f"{prefix}:q:active", 0, -1) == [job.id]
    assert redis_client.hget(f"{prefix}:q:{job.id}", "atm") in (None, "0")
    redis_client.delete(foreign_key)
    wait_for(lambda: queue.get_job_state(job.id) == "completed", timeout=15)
    assert len(runs) == 2
    worker.close()


def test_a_due_delayed_job_stays_delayed_while_its_wait_list_is_foreign(
    queue, make_worker, redis_client, prefix
):
    """Promoting a due job took it out of `delayed` before pushing it on `wait`: a foreign
    value at `wait` lost it. Now it is pushed first; refused, it is still delayed."""
    job = queue.add("x", {"n": 1}, delay=1)
    wait_key = f"{prefix}:q:wait"
    redis_client.set(wait_key, "another client's value")
    errors: list[str] = []
    worker = make_worker("q", lambda job: "done", autorun=False)
    worker.on("error", lambda error: errors.append(str(error)))
    worker.start()
    wait_for(lambda: errors, message="no error for the refused promotion")
    assert redis_client.zrange(f"{prefix}:q:delayed", 0, -1) == [job.id]
    redis_client.delete(wait_key)
    wait_for(lambda: queue.get_job_state(job.id) == "completed", timeout=15)
    worker.close()


def test_the_stalled_check_leaves_stalled_jobs_active_while_wait_is_foreign(
    queue, redis_client, prefix
):
    """The stalled check took a job out of `active` and then pushed it on `wait`: a foreign
    value there lost it. Now the check refuses first; the job is moved once it is mended."""
    job = queue.add("x", {"n": 1})
    redis_client.lmove(f"{prefix}:q:wait", f"{prefix}:q:active", "RIGHT", "LEFT")  # no lock
    assert queue.check_stalled(stalled_interval_ms=10) == []  # marks it a candidate
    wait_key = f"{prefix}:q:wait"
    redis_client.set(wait_key, "another client's value")

    def refused() -> str | None:
        try:
            queue.check_stalled(stalled_interval_ms=10)
        except redis.ResponseError as error:
            return str(error)
        return None

    error = wait_for(refused)
    assert f"{wait_key} holds a string" in error and "the stalled jobs left as it was" in error
    assert redis_client.lrange(f"{prefix}:q:active", 0, -1) == [job.id]
    redis_client.delete(wait_key)
    assert wait_for(lambda: queue.check_stalled(stalled_interval_ms=10)) == [job.id]
    assert redis_client.lrange(wait_key, 0, -1) == [job.id]


def test_a_foreign_value_at_the_events_stream_loses_events_not_jobs(
    queue, make_worker, redis_client, prefix
):
    """The events stream tells of what the scripts did. A foreign value at its key made
    every XADD fail after the script's writes: a fetched job was left active without its
    worker knowing (then failed as stalled), a finish half-done. Events are dropped now;
    every job is run and recorded, and the stalled check, pause and clean still work."""
    events_key = f"{prefix}:q:events"
    redis_client.set(events_key, "another client's value")
    ok = queue.add("ok", {"n": 1})
    bad = queue.add("bad", {"n": 2}, attempts=2)
    later = queue.add("later", {"n": 3}, delay=1)

    def processor(job):  # noqa: ANN001, ANN202
        if job.name == "bad":
            raise ValueError("always")
        return job.name

    errors: list[BaseException] = []
    worker = make_worker("q", processor, autorun=False)
    worker.on("error", errors.append)
    worker.start()
    wait_for(lambda: queue.get_job_counts("completed", "failed") == {"completed": 2, "failed": 1})
    worker.close()
    assert errors == []
    assert [queue.get_job_state(job.id) for job in (ok, bad, later)] == [
        "completed",
        "failed",
        "completed",
    ]
    assert queue.check_stalled(stalled_interval_ms=10) == []
    queue.pause()
    queue.resume()
    assert sorted(queue.clean(0, 10, "completed")) == sorted([ok.id, later.id])
    assert redis_client.get(events_key) == "another client's value"


def test_an_add_refused_by_a_foreign_wait_list_leaves_nothing_to_mistake_for_the_job(
    queue, redis_client, prefix
):
    """The add wrote the job's hash and then pushed it on `wait`: refused there, the hash
    stayed, and the producer's retry with the same job_id was answered with that hash as
    the job added, which was in no state. Now the push comes first: refused, nothing is
    written, and the retry once the key is mended adds the job."""
    wait_key = f"{prefix}:q:wait"
    redis_client.set(wait_key, "another client's value")
    with pytest.raises(ForeignKeyValue) as refused:
        queue.add("x", {"n": 1}, job_id="order-7")
    assert str(refused.value) == (
        f"add: {wait_key} holds a string, not a list (another client's value); "
        f'job "x" for queue "{prefix}:q" not added: delete or rename that key'
    )
    assert isinstance(refused.value, redis.ResponseError)  # as Redis's own refusal was
    assert not redis_client.exists(f"{prefix}:q:order-7")
    redis_client.delete(wait_key)
    job = queue.add("x", {"n": 1}, job_id="order-7")
    assert job.id == "order-7"
    assert redis_client.lrange(wait_key, 0, -1) == ["order-7"]


def test_a_foreign_value_at_the_marker_costs_wake_ups_not_jobs(
    queue, make_worker, redis_client, prefix
):
    """The marker only wakes idle workers. A foreign value there failed every add after it
    had written the job (the producer told it failed); the add now succeeds, and a worker
    still takes the jobs (its wait on the marker fails, and it fetches again)."""
    marker_key = f"{prefix}:q:marker"
    redis_client.set(marker_key, "another client's value")
    jobs = [queue.add("x", {"n": n}) for n in range(3)]
    assert queue.get_job_counts("waiting") == {"waiting": 3}
    worker = make_worker("q", lambda job: job.data["n"], autorun=False, drain_delay=0.2)
    worker.on("error", lambda error: None)
    worker.start()
    wait_for(lambda: [queue.get_job_state(job.id) for job in jobs] == ["completed"] * 3)
    late = queue.add("x", {"n": 3})
    wait_for(lambda: queue.get_job_state(late.id) == "completed")
    worker.close()
    assert redis_client.get(marker_key) == "another client's value"


def test_a_refused_wait_on_the_marker_is_reported_once_not_at_every_turn(
    queue, make_worker, redis_client, prefix
):
    """With delayed jobs due soon the worker's timer is short (1 ms when one is due): each
    turn logged the refusal and emitted it again, hundreds of lines a second. Now it is
    said once until a wait on the marker succeeds."""
    marker_key = f"{prefix}:q:marker"
    redis_client.set(marker_key, "another client's value")
    jobs = [queue.add("x", {"n": n}, delay=50 * n + 50) for n in range(6)]
    errors: list[str] = []
    worker = make_worker("q", lambda job: job.data["n"], autorun=False, drain_delay=0.2)
    worker.on("error", lambda error: errors.append(str(error)))
    worker.start()
    wait_for(lambda: [queue.get_job_state(job.id) for job in jobs] == ["completed"] * 6)
    assert len(errors) == 1 and "WRONGTYPE" in errors[0], errors
    redis_client.delete(marker_key)
    late = queue.add("x", {"n": 6})
    wait_for(lambda: queue.get_job_state(late.id) == "completed")
    worker.close()


@pytest.mark.parametrize(
    ("suffix", "options", "kind"),
    [
        ("delayed", {"delay": 60_000}, "zset"),
        ("prioritized", {"priority": 3}, "zset"),
        ("id", {}, "string"),
        ("meta", {}, "hash"),
    ],
)
def test_an_add_refused_by_a_foreign_value_names_the_key_and_writes_no_job(
    suffix, options, kind, queue, redis_client, prefix
):
    key = f"{prefix}:q:{suffix}"
    redis_client.rpush(key, "another client's list")
    with pytest.raises(ForeignKeyValue, match=f"{key} holds a list, not a {kind}"):
        queue.add("x", {"n": 1}, job_id="order-8", **options)
    assert not redis_client.exists(f"{prefix}:q:order-8")
    redis_client.delete(key)
    assert queue.add("x", {"n": 1}, job_id="order-8", **options).id == "order-8"
    assert queue.get_job_state("order-8") in ("delayed", "prioritized", "waiting")


def test_an_add_to_a_queue_with_a_concurrency_limit_and_a_foreign_active_list_is_taken(
    queue, make_worker, redis_client, prefix
):
    """With a global concurrency the add reads `active`'s length after the job is written:
    a foreign value there failed the add of a job that was in fact added (a retry without
    a job id added it twice). Now the add is taken and the job waits; no job can be taken
    from the queue until the key is mended, and then it runs."""
    queue.set_global_concurrency(2)
    active = f"{prefix}:q:active"
    redis_client.set(active, "another client's value")
    job = queue.add("x", {"n": 1})
    assert redis_client.lrange(f"{prefix}:q:wait", 0, -1) == [job.id]
    redis_client.delete(active)
    worker = make_worker("q", lambda job: "done")
    wait_for(lambda: queue.get_job_state(job.id) == "completed")
    worker.close()


def test_a_fetch_refused_by_a_foreign_value_names_the_key(queue, make_worker, redis_client, prefix):
    """A foreign value at `active` refuses every fetch (nothing is taken: RPOPLPUSH checks
    both keys first). The worker keeps trying, with an error that names the key, and
    takes the job once the key is mended."""
    active_key = f"{prefix}:q:active"
    redis_client.set(active_key, "another client's value")
    job = queue.add("x", {"n": 1})
    errors: list[BaseException] = []
    worker = make_worker("q", lambda job: "done", autorun=False)
    worker.on("error", errors.append)
    worker.start()
    wait_for(lambda: errors)
    # the fetch, and the stalled check (it reads active too), say which key it is
    assert all(isinstance(error, ForeignKeyValue) for error in errors), errors
    assert f"{active_key} holds a string, not a list" in str(errors[0])
    assert redis_client.lrange(f"{prefix}:q:wait", 0, -1) == [job.id]
    redis_client.delete(active_key)
    wait_for(lambda: queue.get_job_state(job.id) == "completed", timeout=15)
    worker.close()


def _completed(queue, jobs) -> bool:  # noqa: ANN001
    return all(queue.client.zscore(queue.keys.key("completed"), job.id) is not None for job in jobs)


@pytest.mark.parametrize(
    ("suffix", "refused"),
    [
        ("groups:maxed", True),
        ("groups:limited", True),
        ("groups:turn", False),
        ("group:g1:active", False),
    ],
)
def test_a_foreign_value_at_a_group_key_loses_no_grouped_job(
    suffix, refused, queue, make_worker, redis_client, prefix
):
    """Groups keep shared keys (the ring, the turn counter, the maxed and limited groups)
    and each group its own. A foreign value at `groups:maxed` lost the job a fetch took
    from its group; one at the turn counter left the group without a turn for good. Now
    a shared set is checked before the fetch writes (the worker reports it), a refused
    counter is renumbered, and a group whose own key is foreign waits its turn."""
    queue.set_group_concurrency(1)
    jobs = [queue.add("x", {"n": n}, group={"id": "g1"}) for n in range(3)]
    key = f"{prefix}:q:{suffix}"
    redis_client.set(key, "another client's value")
    errors: list[BaseException] = []
    worker = make_worker("q", lambda job: job.data["n"], autorun=False, drain_delay=0.2)
    worker.on("error", errors.append)
    worker.start()
    if refused:
        wait_for(lambda: errors)
        assert isinstance(errors[0], ForeignKeyValue) and key in str(errors[0])
        assert not any(_completed(queue, [job]) for job in jobs)
        assert sorted(redis_client.lrange(f"{prefix}:q:group:g1:wait", 0, -1)) == sorted(
            job.id for job in jobs
        )
    if suffix != "groups:turn":
        redis_client.delete(key)
    wait_for(lambda: _completed(queue, jobs), timeout=15)
    worker.close()


def test_a_grouped_job_whose_group_key_turns_foreign_while_it_runs_is_not_lost(
    queue, make_worker, redis_client, prefix
):
    """The finish released the job from `active` and then refused the group's active set:
    the job was in no state. Now the group's keys are checked first; the job stays active
    and runs again once the key is mended."""
    queue.set_group_concurrency(1)
    job = queue.add("x", {"n": 1}, group={"id": "g1"})
    active_set = f"{prefix}:q:group:g1:active"
    runs: list[str] = []
    processor = _turning_foreign(redis_client, active_set, runs)
    errors: list[str] = []
    worker = _first_error(make_worker, processor, errors, "the refused finish")
    assert f"{active_set} holds a string, not a set" in errors[0], errors[0]
    assert redis_client.lrange(f"{prefix}:q:active", 0, -1) == [job.id]
    redis_client.delete(active_set)
    wait_for(lambda: _completed(queue, [job]), timeout=15)
    assert len(runs) in (1, 2)  # the finish sent again, or the job run again
    worker.close()


def _foreign(client: redis.Redis, key: str, kind: str) -> None:
    """Another client's value at `key`: one of another kind than `kind`."""
    if kind == "string":
        client.hset(key, "owner", "another client")
    else:
        client.set(key, "another client's value")


@pytest.mark.parametrize(
    "deduplication",
    [
        {"id": "d1"},
        {"id": "d1", "ttl": 60_000, "extend": True},
        {"id": "d1", "ttl": 60_000, "replace": True},
        {"id": "d1", "keep_last_if_active": True},
    ],
)
def test_an_add_refused_by_a_foreign_deduplication_key_names_it(
    deduplication, queue, redis_client, prefix
):
    """A deduplication id's key holding a hash made the add fail with Redis's WRONGTYPE,
    which names no key. Now the add names it and writes nothing; once it is deleted the
    job is added and owns the id."""
    dedup_key = f"{prefix}:q:de:d1"
    _foreign(redis_client, dedup_key, "string")
    with pytest.raises(ForeignKeyValue, match=f"{dedup_key} holds a hash, not a string"):
        queue.add("x", {"n": 1}, job_id="j1", deduplication=deduplication)
    assert not redis_client.exists(f"{prefix}:q:j1")
    assert redis_client.hgetall(dedup_key) == {"owner": "another client"}
    redis_client.delete(dedup_key)
    assert queue.add("x", {"n": 1}, job_id="j1", deduplication=deduplication).id == "j1"
    assert redis_client.get(dedup_key) == "j1"


@pytest.mark.parametrize("keep_last", [False, True])
def test_a_deduplicated_job_whose_key_turns_foreign_while_it_runs_is_not_lost(
    keep_last, queue, make_worker, redis_client, prefix
):
    """The finish took the job out of active and then read its deduplication key: a hash
    there lost the job (and the job kept for after it). Now that key is checked first:
    the job stays active, the worker names the key, and once it is deleted the job is
    recorded (and the kept one added)."""
    deduplication = {"id": "d1", "keep_last_if_active": keep_last}
    job = queue.add("x", {"n": 1}, deduplication=deduplication)
    dedup_key = f"{prefix}:q:de:d1"
    runs: list[str] = []

    def processor(job):  # noqa: ANN001, ANN202
        runs.append(job.id)
        if len(runs) == 1:
            if keep_last:
                queue.add("x", {"n": 2}, job_id="kept", deduplication=deduplication)
            redis_client.delete(dedup_key)
            _foreign(redis_client, dedup_key, "string")
        return job.data["n"]

    errors: list[str] = []
    worker = _first_error(make_worker, processor, errors, "the refused finish")
    assert redis_client.lrange(f"{prefix}:q:active", 0, -1) == [job.id]
    assert f"{dedup_key} holds a hash, not a string" in errors[0], errors[0]
    redis_client.delete(dedup_key)
    wait_for(lambda: queue.get_job_state(job.id) == "completed", timeout=15)
    if keep_last:
        wait_for(lambda: queue.get_job_state("kept") == "completed", timeout=15)
    worker.close()


def test_removing_a_deduplicated_job_leaves_a_foreign_deduplication_key_alone(
    queue, redis_client, prefix
):
    """The removal took the job out of wait and then read its deduplication key: a hash
    there left the job's hash in no state. The key is no claim of the job's: the job is
    removed whole, and the other client's value left as it is."""
    job = queue.add("x", {"n": 1}, deduplication={"id": "d1"})
    dedup_key = f"{prefix}:q:de:d1"
    redis_client.delete(dedup_key)
    _foreign(redis_client, dedup_key, "string")
    queue.get_job(job.id).remove()
    assert not redis_client.exists(f"{prefix}:q:{job.id}")
    assert redis_client.lrange(f"{prefix}:q:wait", 0, -1) == []
    assert redis_client.hgetall(dedup_key) == {"owner": "another client"}


@pytest.mark.parametrize(
    ("suffix", "options", "kind"),
    [
        ("delayed", {"delay": 60_000}, "zset"),
        ("prioritized", {"priority": 2}, "zset"),
        ("pc", {"priority": 2}, "string"),
        ("group:g1:wait", {"group": {"id": "g1"}}, "list"),
        ("de:d1", {"deduplication": {"id": "d1"}}, "string"),
    ],
)
def test_a_bulk_add_refused_at_a_later_job_s_place_writes_none(
    suffix, options, kind, queue, redis_client, prefix
):
    """add_bulk promises all or none, but a later job's place holding another client's
    value was refused after the earlier jobs were written. Now every place is checked
    before the first write."""
    key = f"{prefix}:q:{suffix}"
    _foreign(redis_client, key, kind)
    bulk = [
        {"name": "x", "data": {"n": 1}, "opts": {"job_id": "a"}},
        {"name": "x", "data": {"n": 2}, "opts": {"job_id": "b", **options}},
    ]
    with pytest.raises(ForeignKeyValue, match=f"{key} holds a "):
        queue.add_bulk(bulk)
    assert not redis_client.exists(f"{prefix}:q:a", f"{prefix}:q:b", f"{prefix}:q:wait")
    redis_client.delete(key)
    assert [job.id for job in queue.add_bulk(bulk)] == ["a", "b"]


@pytest.mark.parametrize(
    ("suffix", "kind", "children"),
    [("wait", "list", False), ("waiting-children", "zset", True), ("meta", "hash", False)],
)
def test_a_flow_bulk_refused_at_another_queue_writes_no_tree(
    suffix, kind, children, flow_producer, redis_client, prefix
):
    """FlowProducer.add_bulk writes every tree or none; a later tree's queue holding
    another client's value at its key left the earlier trees written."""
    from flowjobs.engine import Flow

    key = f"{prefix}:other:{suffix}"
    _foreign(redis_client, key, kind)
    second = Flow(
        "y", "other", {}, opts={"job_id": "y"}, children=[Flow("z", "q", {})] if children else []
    )
    flows = [Flow("x", "q", {}, opts={"job_id": "x"}), second]
    with pytest.raises(ForeignKeyValue, match=f"{key} holds a "):
        flow_producer.add_bulk(flows)
    assert redis_client.keys(f"{prefix}:*") == [key]
    redis_client.delete(key)
    assert len(flow_producer.add_bulk(flows)) == 2


def _scheduler_state(client: redis.Redis, prefix: str) -> tuple:
    """What a scheduler's upsert or run writes: its entry, its runs and where they are."""
    return (
        client.zrange(f"{prefix}:q:repeat", 0, -1, withscores=True),
        sorted(client.keys(f"{prefix}:q:repeat:s1:*")),
        client.lrange(f"{prefix}:q:wait", 0, -1),
        client.zrange(f"{prefix}:q:delayed", 0, -1),
    )


@pytest.mark.parametrize(
    ("suffix", "kind", "schedule"),
    [
        ("wait", "list", {"every": 60_000}),  # the first run is due now
        ("delayed", "zset", {"pattern": "0 0 1 1 *"}),  # the first run is due later
        ("repeat", "zset", {"every": 60_000}),
        ("repeat:s1", "hash", {"pattern": "0 0 1 1 *"}),  # an existing one's pending run
        ("id", "string", {"pattern": "0 0 1 1 *"}),
    ],
)
def test_an_upsert_refused_by_a_foreign_value_keeps_the_scheduler_as_it_was(
    suffix, kind, schedule, queue, redis_client, prefix
):
    """An upsert wrote its run's hash before the run's place refused it (a run in no
    state, which later upserts took for an existing run), or removed the pending run
    before the definition's key refused the rest (a scheduler without a run). Now every
    key is checked first: nothing is written, the error names the key, and the upsert
    goes through once it is deleted."""
    key = f"{prefix}:q:{suffix}"
    existing = suffix in ("repeat:s1", "id")
    if existing:
        queue.upsert_job_scheduler("s1", **schedule)
        redis_client.delete(key)
    before = _scheduler_state(redis_client, prefix) if existing else None
    _foreign(redis_client, key, kind)
    with pytest.raises(ForeignKeyValue, match=f"{key} holds a "):
        queue.upsert_job_scheduler("s1", **schedule, template={"data": {"v": 2}})
    if existing:
        assert _scheduler_state(redis_client, prefix) == before
    else:
        assert redis_client.keys(f"{prefix}:*") == [key]
    redis_client.delete(key)
    run = queue.upsert_job_scheduler("s1", **schedule, template={"data": {"v": 2}})
    assert queue.get_job_state(run.id) in ("waiting", "delayed")
    assert queue.get_job_scheduler("s1") is not None


def test_removing_a_scheduler_refused_by_a_foreign_value_names_the_key(queue, redis_client, prefix):
    queue.upsert_job_scheduler("s1", pattern="0 0 1 1 *")
    key = f"{prefix}:q:repeat:s1"
    redis_client.delete(key)
    _foreign(redis_client, key, "hash")
    before = _scheduler_state(redis_client, prefix)
    with pytest.raises(ForeignKeyValue, match=f"{key} holds a string, not a hash"):
        queue.remove_job_scheduler("s1")
    assert _scheduler_state(redis_client, prefix) == before
    redis_client.delete(key)
    assert queue.remove_job_scheduler("s1")
    assert _scheduler_state(redis_client, prefix) == ([], [], [], [])


@pytest.mark.parametrize(("suffix", "kind"), [("id", "string"), ("repeat:s1", "hash")])
def test_a_worker_s_next_run_refused_by_a_foreign_value_writes_nothing(
    suffix, kind, queue, make_worker, redis_client, prefix
):
    """Taking a scheduler's run makes its next one: the scheduler's entry was moved on
    (and the run's hash written) before the id counter refused the rest, leaving a
    scheduler whose next run was in no state, made by nobody ever again. Now the keys
    are checked first: the worker reports the refusal, runs the run it took, and the
    scheduler is as it was, so an upsert once the key is deleted gives it its next run."""
    first = queue.upsert_job_scheduler("s1", every=60_000)
    key = f"{prefix}:q:{suffix}"
    redis_client.delete(key)
    _foreign(redis_client, key, kind)
    before = _scheduler_state(redis_client, prefix)
    errors: list[BaseException] = []
    worker = make_worker("q", lambda job: job.id, autorun=False)
    worker.on("error", errors.append)
    worker.start()
    wait_for(lambda: errors, message="no error for the refused next run")
    wait_for(lambda: queue.get_job_state(first.id) == "completed")
    worker.close()
    assert isinstance(errors[0], ForeignKeyValue) and key in str(errors[0]), errors[0]
    assert _scheduler_state(redis_client, prefix)[:2] == before[:2]
    redis_client.delete(key)
    run = queue.upsert_job_scheduler("s1", every=60_000)
    # (with its definition deleted, the scheduler starts afresh: a run due now)
    assert run.id != first.id and queue.get_job_state(run.id) in ("delayed", "waiting")


def test_a_worker_makes_a_refused_next_run_once_the_key_is_mended(
    queue, make_worker, redis_client, prefix, monkeypatch
):
    """A next run the worker could not make was made by no one (the scheduler stopped
    for good, until an upsert). Now the worker tries again while it runs: once the key is
    deleted, the scheduler has its next run, made once."""
    monkeypatch.setattr(worker_module, "REFUSED_RECORD_RETRY_S", 0.2)
    first = queue.upsert_job_scheduler("s1", every=60_000)
    key = f"{prefix}:q:id"
    redis_client.delete(key)
    _foreign(redis_client, key, "string")
    errors: list[BaseException] = []
    worker = make_worker("q", lambda job: job.id, autorun=False)
    worker.on("error", errors.append)
    worker.start()
    wait_for(lambda: len(errors) >= 2, message="the next run was not tried again")
    assert all(isinstance(error, ForeignKeyValue) for error in errors), errors
    assert redis_client.zrange(f"{prefix}:q:delayed", 0, -1) == []
    redis_client.delete(key)
    wait_for(lambda: redis_client.zcard(f"{prefix}:q:delayed") == 1, timeout=10)
    (next_run,) = redis_client.zrange(f"{prefix}:q:delayed", 0, -1)
    assert next_run.startswith("repeat:s1:") and next_run != first.id
    assert queue.get_job_state(first.id) == "completed"
    count = len(errors)
    worker.close()
    assert len(errors) == count  # no retry after it was made
    assert redis_client.zcard(f"{prefix}:q:delayed") == 1


def test_locks_are_renewed_while_the_stalled_set_is_foreign(
    queue, make_worker, redis_client, prefix
):
    """A lock renewal also takes the renewed jobs off the stalled set: a foreign value
    there failed the renewal after the first job's lock, and the others' locks ran out
    (another worker could then run them again). Now every lock is renewed."""
    stalled_key = f"{prefix}:q:stalled"
    release = threading.Event()
    started: list[str] = []

    async def processor(job):  # noqa: ANN001, ANN202
        started.append(job.id)
        await asyncio.to_thread(release.wait, 20)
        return job.id

    jobs = [queue.add("x", {"n": n}) for n in range(3)]
    errors: list[str] = []
    renewals: list[int] = []
    worker = make_worker(
        "q", processor, concurrency=3, autorun=False, lock_duration=600, skip_stalled_check=True
    )
    worker.on("error", lambda error: errors.append(str(error)))
    worker.on("locks_renewed", lambda renewed: renewals.append(renewed["count"]))
    worker.start()
    wait_for(lambda: len(started) == 3)
    redis_client.set(stalled_key, "another client's value")
    seen = len(renewals)
    wait_for(lambda: len(renewals) >= seen + 4, timeout=10, message="no renewals")
    assert not [error for error in errors if "lost the lock" in error], errors
    for job in jobs:
        assert redis_client.exists(f"{prefix}:q:{job.id}:lock"), job.id
    release.set()
    wait_for(lambda: all(queue.get_job_state(job.id) == "completed" for job in jobs))
    worker.close()
    assert redis_client.get(stalled_key) == "another client's value"


@pytest.mark.parametrize("outcome", ["completed", "failed", "retried"])
def test_a_job_whose_active_list_turns_foreign_while_it_runs_is_recorded_whole(
    outcome, queue, make_worker, redis_client, prefix
):
    """Another client replaces `active` (a string where the list was) while a job runs:
    the job is in no list any more. Its finish went into `completed` / `failed` and took
    the lock, then met the foreign `active` and failed half-written (no `finishedOn`, no
    return value; sent again, it found its lock gone). Now the outcome is recorded whole:
    the job is out of `active` already."""
    active_key = f"{prefix}:q:active"
    job = queue.add("x", {"n": 1}, attempts=2 if outcome == "retried" else 1)
    runs: list[str] = []
    errors: list[BaseException] = []
    failure = "" if outcome == "completed" else "the attempt fails"
    processor = _turning_foreign(redis_client, active_key, runs, failure)
    worker = make_worker("q", processor, autorun=False)
    worker.on("error", errors.append)
    worker.start()

    def recorded() -> bool:  # (get_job_state would read the foreign `active` too)
        if outcome == "retried":  # (it was in wait before its first run too)
            return runs and job.id in redis_client.lrange(f"{prefix}:q:wait", 0, -1)
        return redis_client.zscore(f"{prefix}:q:{outcome}", job.id) is not None

    wait_for(recorded, timeout=10)
    fields = redis_client.hgetall(f"{prefix}:q:{job.id}")
    if outcome == "completed":
        assert fields.get("returnvalue") == '"done"' and "finishedOn" in fields, fields
    elif outcome == "failed":
        assert fields.get("failedReason") == "the attempt fails" and "finishedOn" in fields
    else:
        assert fields.get("atm") == "1", fields
    assert redis_client.get(active_key) == "another client's value"
    assert not redis_client.exists(f"{prefix}:q:{job.id}:lock")
    if outcome == "retried":  # taken again once the key is mended
        redis_client.delete(active_key)
        wait_for(lambda: queue.get_job_state(job.id) == "completed", timeout=15)
    assert len(runs) == (2 if outcome == "retried" else 1)
    worker.close()
