"""A parent's own keys (`<parent>:dependencies`, `:processed`, `:failed`, `:unsuccessful`)
and the keys of its queue that releasing it writes, holding another client's value: the
script that meets one refuses before its first write, with an error that names the key,
and no child or parent is lost or left half-moved."""

from __future__ import annotations

import pytest
import redis

from flowjobs.engine import Flow, ForeignKeyValue
from tests.engine.test_foreign_queue_keys import _foreign
from tests.helpers import wait_for

PARENT_ID = "parent-1"


def _mend(client: redis.Redis, key: str) -> None:
    """Deletes the foreign value; a parent's dependencies set gets back the child it held."""
    client.delete(key)
    if key.endswith(f"{PARENT_ID}:dependencies"):
        prefix = key.split(":", 1)[0]
        client.sadd(key, f"{prefix}:c:child-0")


def _flow(child_options: dict | None = None, children: int = 1) -> Flow:
    """A parent in queue q waiting for its children in queue c."""
    return Flow(
        "parent",
        "q",
        {},
        opts={"job_id": PARENT_ID},
        children=[
            Flow("child", "c", {"n": n}, opts={"job_id": f"child-{n}", **(child_options or {})})
            for n in range(children)
        ],
    )


def test_a_flow_refused_by_a_foreign_dependencies_set_writes_no_job(
    flow_producer, redis_client, prefix
):
    """The flow's parent and first child were written before the SADD into the parent's
    dependencies was refused: a parent waiting for children that were never linked. Now
    every parent's set is checked before the first write."""
    dependencies = f"{prefix}:q:{PARENT_ID}:dependencies"
    _foreign(redis_client, dependencies, "set")
    with pytest.raises(ForeignKeyValue, match=f"{dependencies} holds a string, not a set"):
        flow_producer.add(_flow(children=2))
    assert sorted(redis_client.keys(f"{prefix}:*")) == [dependencies]
    redis_client.delete(dependencies)
    flow_producer.add(_flow(children=2))
    assert redis_client.zrange(f"{prefix}:q:waiting-children", 0, -1) == [PARENT_ID]
    assert redis_client.scard(dependencies) == 2


def test_a_child_refused_by_its_parent_s_foreign_dependencies_set_is_not_added(
    flow_producer, make_queue, redis_client, prefix
):
    """A child added under an existing parent was written, then its link refused: a job
    that ran without its parent waiting for it. Now the add writes nothing."""
    flow_producer.add(_flow())
    dependencies = f"{prefix}:q:{PARENT_ID}:dependencies"
    redis_client.delete(dependencies)
    _foreign(redis_client, dependencies, "set")
    children = make_queue("c")
    parent = {"id": PARENT_ID, "queue": f"{prefix}:q"}
    with pytest.raises(ForeignKeyValue, match=f"{dependencies} holds a string, not a set"):
        children.add("late", {}, job_id="late", parent=parent)
    assert not redis_client.exists(f"{prefix}:c:late")
    assert redis_client.lrange(f"{prefix}:c:wait", 0, -1) == ["child-0"]
    redis_client.delete(dependencies)
    children.add("late", {}, job_id="late", parent=parent)
    assert redis_client.smembers(dependencies) == {f"{prefix}:c:late"}


@pytest.mark.parametrize(
    ("suffix", "kind", "child_options", "fails"),
    [
        (f"q:{PARENT_ID}:dependencies", "set", {}, False),
        (f"q:{PARENT_ID}:processed", "hash", {}, False),
        (f"q:{PARENT_ID}:failed", "hash", {"ignore_dependency_on_failure": True}, True),
        (f"q:{PARENT_ID}:unsuccessful", "zset", {"fail_parent_on_failure": True}, True),
        ("q:wait", "list", {}, False),  # the last child releases the parent there
        ("q:wait", "list", {"fail_parent_on_failure": True}, True),
    ],
)
def test_a_child_finish_refused_by_a_foreign_parent_key_leaves_the_child_active(
    suffix, kind, child_options, fails, flow_producer, make_queue, make_worker, redis_client, prefix
):
    """A child's finish took it out of active and then updated its parent: a refusal
    there lost the child (or the parent, taken out of waiting-children before its queue's
    wait list refused it). Now the parent's keys are checked before the first write: the
    child stays active, the worker names the key, and once it is mended the child is
    recorded and the parent released."""
    flow_producer.add(_flow({**child_options, "attempts": 1}))
    key = f"{prefix}:{suffix}"
    runs: list[int] = []

    def processor(job):  # noqa: ANN001, ANN202
        runs.append(1)
        if len(runs) == 1:
            redis_client.delete(key)
            _foreign(redis_client, key, kind)
        if fails:
            raise ValueError("the child fails")
        return "done"

    errors: list[BaseException] = []
    worker = make_worker("c", processor, autorun=False, lock_duration=1500, stalled_interval=300)
    worker.on("error", errors.append)
    worker.start()
    wait_for(lambda: errors, message="no error for the refused finish")
    assert redis_client.lrange(f"{prefix}:c:active", 0, -1) == ["child-0"]
    assert f"{key} holds a string, not a {kind}" in str(errors[0]), errors[0]
    assert redis_client.hget(f"{prefix}:c:child-0", "finishedOn") is None
    assert redis_client.zrange(f"{prefix}:q:waiting-children", 0, -1) == [PARENT_ID]
    if not suffix.endswith(":dependencies"):
        assert redis_client.smembers(f"{prefix}:q:{PARENT_ID}:dependencies") == {
            f"{prefix}:c:child-0"
        }

    _mend(redis_client, key)
    children, parents = make_queue("c"), make_queue("q")
    outcome = "failed" if fails else "completed"
    wait_for(lambda: children.get_job_state("child-0") == outcome, timeout=15)
    wait_for(lambda: parents.get_job_state(PARENT_ID) == "waiting")
    worker.close()


@pytest.mark.parametrize("operation", ["remove_child_dependency", "remove"])
@pytest.mark.parametrize(
    ("suffix", "kind"), [(f"q:{PARENT_ID}:dependencies", "set"), ("q:wait", "list")]
)
def test_unlinking_a_child_refused_by_a_foreign_parent_key_changes_nothing(
    operation, suffix, kind, flow_producer, make_queue, redis_client, prefix
):
    """Detaching or removing the last child releases the parent: it was taken out of
    waiting-children before its queue's wait list refused it (lost). Now the parent's
    keys are checked first; refused, the child is still its parent's and the parent
    still waits, and once the key is mended the unlink goes through."""
    flow_producer.add(_flow())
    key = f"{prefix}:{suffix}"
    redis_client.delete(key)
    _foreign(redis_client, key, kind)
    child = make_queue("c").get_job("child-0")
    with pytest.raises(ForeignKeyValue, match=f"{key} holds a string, not a {kind}"):
        getattr(child, operation)()
    assert redis_client.zrange(f"{prefix}:q:waiting-children", 0, -1) == [PARENT_ID]
    assert redis_client.hget(f"{prefix}:c:child-0", "parentKey") == f"{prefix}:q:{PARENT_ID}"
    assert redis_client.lrange(f"{prefix}:c:wait", 0, -1) == ["child-0"]
    if kind != "set":
        assert redis_client.smembers(f"{prefix}:q:{PARENT_ID}:dependencies") == {
            f"{prefix}:c:child-0"
        }

    _mend(redis_client, key)
    getattr(child, operation)()
    assert make_queue("q").get_job_state(PARENT_ID) == "waiting"


def test_a_parent_moved_to_waiting_children_while_that_set_is_foreign_stays_active(
    flow_producer, make_queue, make_worker, redis_client, prefix
):
    """A processor's move to waiting-children took the parent out of active and then had
    waiting-children refuse it: the parent was in no state. Now the set is checked first:
    refused, the parent is still active, and the processor's next try moves it."""
    from flowjobs.engine import WaitingChildrenError

    flow_producer.add(_flow())
    parents = make_queue("q")
    key = f"{prefix}:q:waiting-children"
    # the parent runs now, its child still pending (as after a child added at run time)
    redis_client.zrem(key, PARENT_ID)
    redis_client.rpush(f"{prefix}:q:wait", PARENT_ID)
    refusals: list[str] = []
    active_then: list[list[str]] = []
    runs: list[int] = []

    def processor(job, token):  # noqa: ANN001, ANN202
        redis_client.set(key, "another client's value")
        try:
            job.move_to_waiting_children(token)
        except redis.ResponseError as error:
            refusals.append(str(error))
        active_then.append(redis_client.lrange(f"{prefix}:q:active", 0, -1))
        redis_client.delete(key)
        runs.append(1)
        if job.move_to_waiting_children(token):
            raise WaitingChildrenError()
        return "done"

    worker = make_worker("q", processor, autorun=False)
    worker.start()
    wait_for(lambda: runs)  # the foreign value is gone (the state's lookup reads it)
    wait_for(lambda: parents.get_job_state(PARENT_ID) == "waiting-children", timeout=15)
    worker.close()
    assert len(refusals) == 1 and f"{key} holds a string, not a zset" in refusals[0], refusals
    assert active_then == [[PARENT_ID]]
