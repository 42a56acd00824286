"""Flows: trees across queues, added atomically, with every child failure policy."""

from __future__ import annotations

import pytest

from flowjobs.engine import (
    Flow,
    InvalidJobOptions,
    Queue,
    UnrecoverableError,
    WaitingChildrenError,
)
from tests.helpers import wait_for


def state(queue: Queue, job_id: str) -> str:
    return queue.get_job_state(job_id)


def wait_state(queue: Queue, job_id: str, expected: str, timeout: float = 10.0) -> None:
    wait_for(
        lambda: state(queue, job_id) == expected,
        timeout=timeout,
        message=f"{job_id} never became {expected} (is {state(queue, job_id)})",
    )


def test_report_flow_layout_and_run(flow_producer, make_queue, make_worker, redis_client, prefix):
    tree = flow_producer.add(
        Flow(
            "render",
            "reports",
            {"report": 7},
            children=[
                Flow("fetch", "fetchers", {"source": "sales"}),
                Flow("fetch", "fetchers", {"source": "costs"}),
            ],
        )
    )
    parent = tree.job
    assert redis_client.zrange(f"{prefix}:reports:waiting-children", 0, -1) == [parent.id]
    child_keys = {f"{prefix}:fetchers:{c.job.id}" for c in tree.children}
    assert redis_client.smembers(f"{prefix}:reports:{parent.id}:dependencies") == child_keys
    child = redis_client.hgetall(next(iter(child_keys)))
    assert child["parentKey"] == f"{prefix}:reports:{parent.id}"
    import json

    assert json.loads(child["parent"]) == {
        "id": parent.id,
        "queueKey": f"{prefix}:reports",
    }
    assert json.loads(child["opts"])["parent"] == {
        "id": parent.id,
        "queue": f"{prefix}:reports",
    }

    def render(job):
        values = job.get_children_values()
        return sorted(v["rows"] for v in values.values())

    make_worker("fetchers", lambda job: {"rows": len(job.data["source"])}, concurrency=2)
    make_worker("reports", render)
    reports = make_queue("reports")
    wait_state(reports, parent.id, "completed")
    assert reports.get_job(parent.id).returnvalue == [5, 5]


def test_nested_deploy_flow_runs_parent_last(flow_producer, make_queue, make_worker):
    finished_at: dict[str, int] = {}
    tree = flow_producer.add(
        Flow(
            "deploy",
            "deploy",
            children=[
                Flow(
                    "build",
                    "build",
                    {"svc": svc},
                    children=[
                        Flow("test", "test", {"svc": svc, "suite": s}) for s in ("unit", "e2e")
                    ],
                )
                for svc in ("api", "web")
            ],
        )
    )

    def record(job):
        import time

        finished_at[job.id] = int(time.time() * 1000)
        return job.name

    for name in ("deploy", "build", "test"):
        make_worker(name, record, concurrency=2)
    deploy = make_queue("deploy")
    wait_state(deploy, tree.job.id, "completed")
    jobs = {node.job.id: node for node in tree.walk()}
    assert len(finished_at) == 7
    for node in tree.walk():
        for child in node.children:
            assert finished_at[child.job.id] <= finished_at[node.job.id]
    assert len(jobs) == 7


def test_etl_chain_passes_values_up(flow_producer, make_queue, make_worker):
    tree = flow_producer.add(
        {
            "name": "load",
            "queue_name": "etl",
            "children": [
                {
                    "name": "transform",
                    "queue_name": "etl",
                    "children": [
                        {
                            "name": "extract",
                            "queue_name": "etl",
                            "data": {"rows": [3, 1, 2]},
                        },
                    ],
                },
            ],
        }
    )

    def etl(job):
        if job.name == "extract":
            return job.data["rows"]
        (upstream,) = job.get_children_values().values()
        return sorted(upstream) if job.name == "transform" else {"loaded": upstream}

    make_worker("etl", etl)
    etl_queue = make_queue("etl")
    wait_state(etl_queue, tree.job.id, "completed")
    assert etl_queue.get_job(tree.job.id).returnvalue == {"loaded": [1, 2, 3]}


def test_map_reduce_with_100_mappers(flow_producer, make_queue, make_worker):
    tree = flow_producer.add(
        Flow(
            "reduce",
            "reduce",
            children=[Flow("map", "map", {"n": n}) for n in range(100)],
        )
    )
    make_worker("map", lambda job: job.data["n"] ** 2, concurrency=10)
    make_worker("reduce", lambda job: sum(job.get_children_values().values()))
    reduce_queue = make_queue("reduce")
    wait_state(reduce_queue, tree.job.id, "completed")
    assert reduce_queue.get_job(tree.job.id).returnvalue == sum(n * n for n in range(100))
    counts = reduce_queue.get_job(tree.job.id).get_dependencies_count()
    assert counts == {"processed": 100, "unprocessed": 0, "ignored": 0, "failed": 0}


def failing_child_flow(flow_producer, policy: dict) -> tuple:
    tree = flow_producer.add(
        Flow(
            "parent",
            "parents",
            children=[
                Flow("ok", "children", {"fail": False}),
                Flow("bad", "children", {"fail": True}, **policy),
                Flow("slow", "children", {"fail": False, "hold": True}),
            ],
        )
    )
    return tree, {c.job.name: c.job for c in tree.children}


def child_processor(release):
    def process(job):
        if job.data["fail"]:
            raise UnrecoverableError("child boom")
        if job.data.get("hold"):
            release.wait(10)
        return {"child": job.name}

    return process


@pytest.fixture
def release():
    import threading

    event = threading.Event()
    yield event
    event.set()


def test_fail_parent_on_failure(flow_producer, make_queue, make_worker, release, prefix):
    tree, children = failing_child_flow(flow_producer, {"fail_parent_on_failure": True})
    parents = make_queue("parents")
    ran = []
    make_worker("children", child_processor(release), concurrency=3)
    make_worker("parents", lambda job: ran.append(job.id))
    wait_state(parents, tree.job.id, "failed")
    parent = parents.get_job(tree.job.id)
    assert parent.failed_reason == f"child {prefix}:children:{children['bad'].id} failed"
    assert ran == []
    assert parent.get_dependencies()["failed"] == [f"{prefix}:children:{children['bad'].id}"]
    release.set()


def test_continue_parent_on_failure(flow_producer, make_queue, make_worker, prefix):
    tree = flow_producer.add(
        Flow(
            "parent",
            "parents",
            children=[
                Flow("bad", "children", {"fail": True}, continue_parent_on_failure=True),
                Flow("later", "children", {"fail": False}, delay=60_000),
            ],
        )
    )
    bad, later = (c.job for c in tree.children)

    def parent(job):
        # released as soon as one child failed, while "later" is still pending
        assert job.get_dependencies_count()["unprocessed"] == 1
        assert job.remove_unprocessed_children() == 1
        return job.get_ignored_children_failures()

    parents = make_queue("parents")
    make_worker("children", child_processor(None))
    make_worker("parents", parent)
    wait_state(parents, tree.job.id, "completed")
    assert parents.get_job(tree.job.id).returnvalue == {f"{prefix}:children:{bad.id}": "child boom"}
    assert make_queue("children").get_job(later.id) is None


def test_ignore_dependency_on_failure(flow_producer, make_queue, make_worker, release, prefix):
    tree, children = failing_child_flow(flow_producer, {"ignore_dependency_on_failure": True})
    release.set()
    parents = make_queue("parents")
    make_worker("children", child_processor(release), concurrency=3)
    make_worker(
        "parents",
        lambda job: [len(job.get_children_values()), job.get_failed_children_values()],
    )
    wait_state(parents, tree.job.id, "completed")
    assert parents.get_job(tree.job.id).returnvalue == [
        2,
        {f"{prefix}:children:{children['bad'].id}": "child boom"},
    ]


def test_remove_dependency_on_failure(flow_producer, make_queue, make_worker, release):
    tree, _ = failing_child_flow(flow_producer, {"remove_dependency_on_failure": True})
    release.set()
    parents = make_queue("parents")
    make_worker("children", child_processor(release), concurrency=3)
    make_worker(
        "parents",
        lambda job: [
            len(job.get_children_values()),
            job.get_ignored_children_failures(),
        ],
    )
    wait_state(parents, tree.job.id, "completed")
    assert parents.get_job(tree.job.id).returnvalue == [2, {}]


def test_default_policy_keeps_parent_waiting(
    flow_producer, make_queue, make_worker, release, prefix
):
    tree, children = failing_child_flow(flow_producer, {})
    release.set()
    parents = make_queue("parents")
    child_queue = make_queue("children")
    make_worker("children", child_processor(release), concurrency=3)
    make_worker("parents", lambda job: "ran")
    wait_for(
        lambda: child_queue.get_job_counts("completed", "failed") == {"completed": 2, "failed": 1}
    )
    assert state(parents, tree.job.id) == "waiting-children"
    deps = parents.get_job(tree.job.id).get_dependencies()
    assert deps["unprocessed"] == [f"{prefix}:children:{children['bad'].id}"]
    assert len(deps["processed"]) == 2


def test_failed_parent_propagates_up_when_its_options_say_so(
    flow_producer, make_queue, make_worker
):
    tree = flow_producer.add(
        Flow(
            "root",
            "top",
            children=[
                Flow(
                    "middle",
                    "mid",
                    fail_parent_on_failure=True,
                    children=[
                        Flow(
                            "leaf",
                            "leaves",
                            {"boom": True},
                            fail_parent_on_failure=True,
                        ),
                    ],
                ),
            ],
        )
    )

    def leaf(job):
        raise UnrecoverableError("leaf failed")

    make_worker("leaves", leaf)
    make_worker("mid", lambda job: "mid ran")
    make_worker("top", lambda job: "top ran")
    top = make_queue("top")
    wait_state(top, tree.job.id, "failed")
    middle = tree.children[0].job
    assert top.get_job(tree.job.id).failed_reason.endswith(f"mid:{middle.id} failed")


def test_parent_options_priority_delay_attempts(flow_producer, make_queue, make_worker):
    runs = []

    def parent(job):
        runs.append(job.attempts_made)
        if job.attempts_made == 0:
            raise RuntimeError("first try fails")
        return "done"

    tree = flow_producer.add(
        Flow(
            "p",
            "parents",
            delay=300,
            priority=3,
            attempts=2,
            children=[Flow("c", "kids")],
        )
    )
    make_worker("kids", lambda job: 1)
    make_worker("parents", parent)
    parents = make_queue("parents")
    wait_state(parents, tree.job.id, "completed")
    job = parents.get_job(tree.job.id)
    assert runs == [0, 1]
    kid = make_queue("kids").get_job(tree.children[0].job.id)
    assert job.processed_on >= kid.finished_on + 300
    assert job.priority == 3


def test_runtime_child_and_move_to_waiting_children(make_queue, make_worker):
    """The "Waiting Children" pattern: a running parent adds children, then waits."""
    parents = make_queue("parents")
    children = make_queue("kids")
    steps = []

    def parent(job, token):
        while True:
            step = job.data.get("step", 1)
            steps.append(step)
            if step == 3:
                assert job.move_to_waiting_children(token) is False  # nothing pending
                return sorted(job.get_children_values().values())
            children.add("kid", {"step": step}, parent={"id": job.id, "queue": "parents"})
            job.update_data({"step": step + 1})
            if job.move_to_waiting_children(token):
                raise WaitingChildrenError()
            # the child already finished: go on with the next step in this run

    job = parents.add("stepper", {})
    make_worker("kids", lambda job: job.data["step"] * 10)
    make_worker("parents", parent)
    wait_state(parents, job.id, "completed")
    assert steps == [1, 2, 3]
    assert parents.get_job(job.id).returnvalue == [10, 20]


def test_chaining_flows_from_inside_a_processor(flow_producer, make_queue, make_worker):
    parents = make_queue("parents")

    def parent(job, token):
        if job.data.get("spawned"):
            return sum(job.get_children_values().values())
        flow_producer.add(
            Flow(
                "sub",
                "subs",
                children=[Flow("leaf", "leaves", {"n": n}) for n in (1, 2)],
            ),
            parent={"id": job.id, "queue": "parents"},
        )
        job.update_data({"spawned": True})
        if job.move_to_waiting_children(token):
            raise WaitingChildrenError()
        # the sub-flow finished before the move (it often does on a busy machine): nothing
        # is pending, the job was not moved and completes now (raising would leave it
        # active until its lock ran out and it stalled)
        return sum(job.get_children_values().values())

    job = parents.add("chain", {})
    make_worker("leaves", lambda job: job.data["n"])
    make_worker("subs", lambda job: sum(job.get_children_values().values()) * 10)
    make_worker("parents", parent)
    wait_state(parents, job.id, "completed")
    assert parents.get_job(job.id).returnvalue == 30


def test_bulk_flows_are_atomic(flow_producer, redis_client, prefix):
    good = Flow("p", "q1", children=[Flow("c", "q2")])
    bad = Flow("p", "q1", children=[Flow("c", "q2", priority=-3)])
    with pytest.raises(InvalidJobOptions, match=r"children\[0\].*priority"):
        flow_producer.add_bulk([good, good, bad])
    assert list(redis_client.scan_iter(match=f"{prefix}:*")) == []
    nodes = flow_producer.add_bulk([good, Flow("p2", "q1", children=[Flow("c", "q2")])])
    assert len(nodes) == 2 and all(len(n.children) == 1 for n in nodes)


def test_flow_with_missing_parent_writes_nothing(flow_producer, redis_client, prefix):
    from flowjobs.engine import ParentJobNotFound

    with pytest.raises(ParentJobNotFound):
        flow_producer.add(
            Flow("p", "q1", children=[Flow("c", "q2")]),
            parent={"id": "missing", "queue": "q0"},
        )
    assert list(redis_client.scan_iter(match=f"{prefix}:*")) == []


def test_get_flow_of_a_three_level_tree(flow_producer):
    tree = flow_producer.add(
        Flow(
            "root",
            "a",
            job_id="root",
            children=[
                Flow(
                    "mid",
                    "b",
                    job_id="mid",
                    children=[Flow("leaf", "c", job_id=f"leaf{i}") for i in range(3)],
                ),
                Flow("side", "c", job_id="side"),
            ],
        )
    )
    read = flow_producer.get_flow("a", "root")
    assert read.job.id == "root" and read.job.name == "root"
    assert sorted(c.job.id for c in read.children) == ["mid", "side"]
    mid = next(c for c in read.children if c.job.id == "mid")
    assert sorted(c.job.id for c in mid.children) == ["leaf0", "leaf1", "leaf2"]
    assert mid.children[0].job.queue_name == "c"
    shallow = flow_producer.get_flow("a", "root", depth=1, max_children=1)
    assert len(shallow.children) == 1 and shallow.children[0].children == []
    assert tree.job.id == "root"


def test_removing_parent_removes_children_and_removing_child_updates_parent(
    flow_producer, make_queue, redis_client, prefix
):
    tree = flow_producer.add(Flow("p", "a", children=[Flow("c1", "b"), Flow("c2", "b")]))
    c1, c2 = (c.job for c in tree.children)
    b = make_queue("b")
    a = make_queue("a")
    b.get_job(c1.id).remove()
    assert redis_client.smembers(f"{prefix}:a:{tree.job.id}:dependencies") == {
        f"{prefix}:b:{c2.id}"
    }
    assert b.get_job(c2.id).remove_child_dependency() is True
    assert state(a, tree.job.id) == "waiting"  # last dependency gone: parent released
    tree2 = flow_producer.add(Flow("p", "a", children=[Flow("c", "b", children=[Flow("g", "b")])]))
    a.get_job(tree2.job.id).remove()
    assert [n.job.id for n in tree2.walk() if redis_client.exists(n.job.key)] == []


def test_deep_and_wide_flows(flow_producer, make_queue, make_worker):
    node = Flow("leaf", "deep")
    for level in range(100):
        node = Flow(f"level{level}", "deep", children=[node])
    deep = flow_producer.add(node)
    assert len(list(deep.walk())) == 101
    wide = flow_producer.add(
        Flow("sum", "wide", children=[Flow("one", "ones") for _ in range(10_000)])
    )
    make_worker("ones", lambda job: 1, concurrency=50)
    make_worker("wide", lambda job: sum(job.get_children_values().values()))
    make_worker("deep", lambda job: job.name, concurrency=4)
    wide_queue = make_queue("wide")
    wait_state(wide_queue, wide.job.id, "completed", timeout=60)
    assert wide_queue.get_job(wide.job.id).returnvalue == 10_000
    wait_state(make_queue("deep"), deep.job.id, "completed", timeout=30)


def _deep_flow(levels: int, queue_name: str = "deep") -> Flow:
    node = Flow("leaf", queue_name)
    for level in range(levels - 1):
        node = Flow(f"level-{level}", queue_name, children=[node])
    return node


@pytest.mark.parametrize(
    "tree",
    [
        Flow("root", "a", job_id="same", children=[Flow("child", "a", job_id="same")]),
        Flow(
            "root",
            "a",
            job_id="top",
            children=[Flow("mid", "b", job_id="mid", children=[Flow("leaf", "a", job_id="top")])],
        ),
    ],
    ids=["child-is-parent", "grandchild-is-root"],
)
def test_a_node_that_repeats_an_ancestor_is_refused_before_any_write(
    flow_producer, redis_client, prefix, tree
):
    with pytest.raises(InvalidJobOptions, match="same queue and id as its ancestor"):
        flow_producer.add(tree)
    assert redis_client.keys(f"{prefix}:*") == []


def test_a_root_attached_under_itself_is_refused(flow_producer, make_queue, redis_client, prefix):
    make_queue("a").add("existing", job_id="holder")
    before = sorted(redis_client.keys(f"{prefix}:*"))
    with pytest.raises(InvalidJobOptions, match="same queue and id as its ancestor"):
        flow_producer.add(
            Flow("again", "a", job_id="holder"), parent={"id": "holder", "queue": f"{prefix}:a"}
        )
    assert sorted(redis_client.keys(f"{prefix}:*")) == before


def test_flows_deeper_than_the_limit_or_cyclic_are_refused(flow_producer, redis_client, prefix):
    from flowjobs.engine.flow import MAX_FLOW_DEPTH

    flow_producer.add(_deep_flow(MAX_FLOW_DEPTH))
    written = sorted(redis_client.keys(f"{prefix}:*"))
    with pytest.raises(InvalidJobOptions, match="MAX_FLOW_DEPTH"):
        flow_producer.add(_deep_flow(2_500))
    cyclic = Flow("loop", "deep")
    cyclic.children.append(cyclic)
    with pytest.raises(InvalidJobOptions, match="MAX_FLOW_DEPTH"):
        flow_producer.add(cyclic)
    assert sorted(redis_client.keys(f"{prefix}:*")) == written
