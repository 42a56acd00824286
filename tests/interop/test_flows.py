"""Flows shared between the implementations.

With `sides` = (A, B): A's FlowProducer adds the tree, B's workers run the
children, A's worker runs the parent. Node -> flowjobs and flowjobs -> Node.
"""

from __future__ import annotations

from typing import Any

import pytest
import redis

Side = Any


def tree_shape(node: dict[str, Any]) -> dict[str, Any]:
    """A getFlow answer reduced to what both sides must agree on."""
    job = node["job"]
    return {
        "id": job["id"],
        "name": job["name"],
        "queue": job["queueQualifiedName"],
        "data": job["data"],
        "returnvalue": job["returnvalue"],
        "parentKey": job["parentKey"],
        "children": sorted(
            (tree_shape(child) for child in node.get("children") or []), key=lambda c: c["id"]
        ),
    }


def test_three_level_flow_across_two_queues(sides: tuple[Side, Side], r: redis.Redis) -> None:
    author, helper = sides
    prefix = author.prefix
    tree = author.producer.flow(
        flow={
            "name": "report",
            "queueName": "flow-top",
            "data": {"report": 1},
            "children": [
                {
                    "name": "section",
                    "queueName": "flow-mid",
                    "data": {"section": "s"},
                    "children": [
                        {"name": "fetch", "queueName": "flow-leaves", "data": {"leaf": "a"}},
                        {"name": "fetch", "queueName": "flow-leaves", "data": {"leaf": "b"}},
                    ],
                },
                {"name": "fetch", "queueName": "flow-leaves", "data": {"leaf": "c"}},
            ],
        }
    )
    root = tree["job"]["id"]
    section = tree["children"][0]["job"]["id"]
    leaf_a, leaf_b = (child["job"]["id"] for child in tree["children"][0]["children"])
    leaf_c = tree["children"][1]["job"]["id"]
    key = {
        "section": f"{prefix}:flow-mid:{section}",
        "a": f"{prefix}:flow-leaves:{leaf_a}",
        "b": f"{prefix}:flow-leaves:{leaf_b}",
        "c": f"{prefix}:flow-leaves:{leaf_c}",
    }
    assert r.smembers(f"{prefix}:flow-top:{root}:dependencies") == {key["section"], key["c"]}
    assert r.smembers(f"{key['section']}:dependencies") == {key["a"], key["b"]}
    for side in (author, helper):
        assert side.producer.getJobState(queue="flow-top", id=root) == "waiting-children"
        assert side.producer.getJobState(queue="flow-mid", id=section) == "waiting-children"
        assert side.producer.getJobCounts(queue="flow-leaves", types=["waiting"]) == {"waiting": 3}
    before = [tree_shape(s.producer.getFlow(queue="flow-top", id=root)) for s in (author, helper)]
    assert before[0] == before[1]

    parent_worker = author.worker(
        {"queue": "flow-top", "doneAfter": 1, "behaviours": {"report": {"action": "children"}}}
    )
    children_worker = helper.worker(
        {
            "queues": ["flow-leaves", "flow-mid"],
            "doneAfter": 4,
            "behaviours": {
                "fetch": {"action": "return", "value": "fetched"},
                "section": {"action": "children"},
            },
        }
    )
    children_worker.expect("done")
    result = parent_worker.expect("completed", id=root, timeout=30)["returnvalue"]
    section_value = {"values": {key["a"]: "fetched", key["b"]: "fetched"}, "ignored": {}}
    assert result == {
        "values": {key["section"]: section_value, key["c"]: "fetched"},
        "ignored": {},
    }
    for side in (author, helper):
        assert side.producer.getChildrenValues(queue="flow-top", id=root) == result["values"]
        assert (
            side.producer.getChildrenValues(queue="flow-mid", id=section) == section_value["values"]
        )
        assert side.producer.getJobState(queue="flow-top", id=root) == "completed"
        assert side.producer.getDependenciesCount(queue="flow-top", id=root) == {
            "processed": 2,
            "unprocessed": 0,
            "ignored": 0,
            "failed": 0,
        }
    after = [tree_shape(s.producer.getFlow(queue="flow-top", id=root)) for s in (author, helper)]
    assert after[0] == after[1]
    assert after[0]["returnvalue"] == result
    assert [c["id"] for c in after[0]["children"]] == sorted([section, leaf_c])
    assert r.scard(f"{prefix}:flow-top:{root}:dependencies") == 0


POLICIES = {
    "fpof": "failParentOnFailure",
    "cpof": "continueParentOnFailure",
    "idof": "ignoreDependencyOnFailure",
    "rdof": "removeDependencyOnFailure",
    "none": None,
}


@pytest.mark.parametrize("policy", list(POLICIES))
def test_child_failure_policies(sides: tuple[Side, Side], r: redis.Redis, policy: str) -> None:
    author, helper = sides
    prefix = author.prefix
    bad_opts: dict[str, Any] = {"attempts": 1}
    if POLICIES[policy]:
        bad_opts[POLICIES[policy]] = True
    tree = author.producer.flow(
        flow={
            "name": "parent",
            "queueName": "pol-parent",
            "children": [
                {"name": "bad", "queueName": "pol-kids", "opts": bad_opts},
                {"name": "good", "queueName": "pol-kids", "data": {"g": 1}},
            ],
        }
    )
    parent = tree["job"]["id"]
    bad, good = (child["job"]["id"] for child in tree["children"])
    bad_key, good_key = f"{prefix}:pol-kids:{bad}", f"{prefix}:pol-kids:{good}"

    parent_worker = author.worker(
        {
            "queue": "pol-parent",
            "doneAfter": 1,
            "behaviours": {"parent": {"action": "waitChildren"}},
        }
    )
    kids = helper.worker(
        {
            "queue": "pol-kids",
            "concurrency": 1,
            "doneAfter": 2,
            "behaviours": {"bad": {"action": "throw", "message": "kid failed"}},
        }
    )
    kids.expect("done")
    assert kids.expect("failed", id=bad)["final"] is True

    if policy == "fpof":
        failed = parent_worker.expect("failed", id=parent, timeout=30)
        reason = f"child {bad_key} failed"
        assert failed["failedReason"] == reason
        assert not parent_worker.where("process", id=parent)  # failed without running
        assert r.zrange(f"{prefix}:pol-parent:{parent}:unsuccessful", 0, -1) == [bad_key]
        for side in (author, helper):
            assert side.producer.getJobState(queue="pol-parent", id=parent) == "failed"
            assert side.producer.getJob(queue="pol-parent", id=parent)["failedReason"] == reason
        counts = {"processed": 1, "unprocessed": 0, "ignored": 0, "failed": 1}
    elif policy == "none":
        for side in (author, helper):
            assert side.producer.getJobState(queue="pol-parent", id=parent) == "waiting-children"
        assert r.smembers(f"{prefix}:pol-parent:{parent}:dependencies") == {bad_key}
        assert not parent_worker.where("process", id=parent)
        counts = {"processed": 1, "unprocessed": 1, "ignored": 0, "failed": 0}
    else:
        result = parent_worker.expect("completed", id=parent, timeout=30)["returnvalue"]
        assert result["values"] == {good_key: {"g": 1}}
        ignored = {} if policy == "rdof" else {bad_key: "kid failed"}
        assert result["ignored"] == ignored
        for side in (author, helper):
            assert side.producer.getJobState(queue="pol-parent", id=parent) == "completed"
            assert (
                side.producer.getIgnoredChildrenFailures(queue="pol-parent", id=parent) == ignored
            )
        counts = {"processed": 1, "unprocessed": 0, "ignored": len(ignored), "failed": 0}
    for side in (author, helper):
        assert side.producer.getDependenciesCount(queue="pol-parent", id=parent) == counts
        assert side.producer.getJobState(queue="pol-kids", id=bad) == "failed"


def test_parent_spawns_a_child_then_waits_for_it(sides: tuple[Side, Side], r: redis.Redis) -> None:
    """The step-job pattern: a running parent adds a child (run by the other side),
    moves itself to waiting-children and completes once the child has."""
    author, helper = sides
    parent = author.producer.add(queue="steps", name="orchestrate", data={"n": 1})
    parent_worker = author.worker(
        {
            "queue": "steps",
            "doneAfter": 1,
            "behaviours": {
                "orchestrate": [
                    {
                        "action": "spawnChild",
                        "queue": "step-kids",
                        "name": "step",
                        "data": {"s": 2},
                    },
                    {"action": "children"},
                ]
            },
        }
    )
    helper.worker(
        {"queue": "step-kids", "behaviours": {"step": {"action": "return", "value": "two"}}}
    )
    result = parent_worker.expect("completed", id=parent["id"])["returnvalue"]
    runs = parent_worker.where("process", id=parent["id"])
    # one run when the child finished before the parent parked itself (moveToWaitingChildren
    # then answers "nothing pending"), else two
    assert len(runs) in (1, 2)
    assert runs[-1]["attemptsMade"] == 0  # waiting for children does not count an attempt
    [child_key] = result["values"]
    assert child_key.startswith(f"{author.prefix}:step-kids:")
    assert result == {"values": {child_key: "two"}, "ignored": {}}
    for side in (author, helper):
        assert side.producer.getChildrenValues(queue="steps", id=parent["id"]) == {child_key: "two"}
        child = side.producer.getJob(queue="step-kids", id=child_key.rsplit(":", 1)[1])
        assert child["parentKey"] == f"{author.prefix}:steps:{parent['id']}"
        assert child["parent"] == {"id": parent["id"], "queueKey": f"{author.prefix}:steps"}
    names = [fields["event"] for _, fields in r.xrange(f"{author.prefix}:steps:events")]
    assert names.count("waiting-children") == len(runs) - 1


def test_released_parent_keeps_its_priority_and_delay(
    sides: tuple[Side, Side], r: redis.Redis
) -> None:
    author, helper = sides
    ids = {}
    for name, opts in (("plain", {}), ("urgent", {"priority": 3}), ("later", {"delay": 600_000})):
        tree = author.producer.flow(
            flow={
                "name": name,
                "queueName": "released",
                "opts": opts,
                "children": [{"name": "kid", "queueName": "released-kids", "data": {"of": name}}],
            }
        )
        ids[name] = tree["job"]["id"]
    worker = helper.worker({"queue": "released-kids", "doneAfter": 3})
    worker.expect("done")
    expected = {"plain": "waiting", "urgent": "prioritized", "later": "delayed"}
    for side in (author, helper):
        for name, state in expected.items():
            assert side.producer.getJobState(queue="released", id=ids[name]) == state, name
    base = f"{author.prefix}:released"
    assert r.lrange(f"{base}:wait", 0, -1) == [ids["plain"]]
    assert int(r.zscore(f"{base}:prioritized", ids["urgent"])) >> 32 == 3
    due = int(r.zscore(f"{base}:delayed", ids["later"])) // 4096
    finished = max(
        int(r.hget(f"{author.prefix}:released-kids:{k}", "finishedOn") or 0)
        for k in r.zrange(f"{author.prefix}:released-kids:completed", 0, -1)
    )
    assert abs(due - (finished + 600_000)) < 1000
