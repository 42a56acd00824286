"""Flows: trees of parent and child jobs across queues, added in one atomic step."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis

from .connection import Connection, check_cluster_prefix, sync_client
from .errors import InvalidJobOptions
from .job import Job
from .keys import QueueKeys, split_job_key
from .options import EncodedJob, encode_job
from .outbox import PushReceipt
from .queue import Queue, run_add


@dataclass
class Flow:
    """One node of a flow: a job, the queue it runs in, and its children."""

    name: str
    queue_name: str
    data: Any = None
    children: list[Flow | dict[str, Any]] = field(default_factory=list)
    opts: dict[str, Any] = field(default_factory=dict)
    prefix: str | None = None

    def __init__(
        self,
        name: str,
        queue_name: str,
        data: Any = None,
        children: Sequence[Flow | dict[str, Any]] | None = None,
        prefix: str | None = None,
        opts: dict[str, Any] | None = None,
        **options: Any,
    ) -> None:
        self.name = name
        self.queue_name = queue_name
        self.data = data
        self.children = list(children or [])
        self.prefix = prefix
        self.opts = {**(opts or {}), **options}


@dataclass
class JobNode:
    """A created (or read) job with its children."""

    job: Job
    children: list[JobNode] = field(default_factory=list)

    def walk(self) -> Iterable[JobNode]:
        yield self
        for child in self.children:
            yield from child.walk()


@dataclass
class EncodedFlows:
    """Flow trees validated by `FlowProducer.encode`, ready for `add_encoded`."""

    jobs: list[EncodedJob]
    shapes: list[tuple]


_NODE_KEYS = {"name", "queue_name", "data", "children", "opts", "prefix"}
# A flow may nest this many levels (far past any real one); deeper trees, and cyclic
# ones, are refused before Python's recursion limit is near.
MAX_FLOW_DEPTH = 200


def _as_flow(node: Flow | dict[str, Any], path: str) -> Flow:
    if isinstance(node, Flow):
        return node
    if not isinstance(node, dict):
        raise InvalidJobOptions(f"flow node {path} must be a Flow or a dict, got {node!r}")
    unknown = set(node) - _NODE_KEYS
    if unknown:
        raise InvalidJobOptions(
            f"flow node {path}: unknown keys {sorted(unknown)} (known: {sorted(_NODE_KEYS)})"
        )
    for required in ("name", "queue_name"):
        if not node.get(required):
            raise InvalidJobOptions(f'flow node {path}: "{required}" is required')
    return Flow(
        node["name"],
        node["queue_name"],
        node.get("data"),
        node.get("children"),
        node.get("prefix"),
        node.get("opts"),
    )


class FlowProducer:
    """Adds flows. Every node of a tree (or of every tree in `add_bulk`) is
    validated first and then written by one script call: all or nothing."""

    def __init__(
        self,
        connection: Connection = None,
        prefix: str = "bull",
        queues_options: dict[str, dict[str, Any]] | None = None,
    ) -> None:
        self.connection = connection
        self.prefix = prefix
        self.client: redis.Redis = sync_client(connection)
        check_cluster_prefix(self.client, prefix)
        self.queues_options = queues_options or {}
        self._queues: dict[tuple[str, str], Queue] = {}
        self.closing = False

    def queue(self, name: str, prefix: str | None = None) -> Queue:
        key = (prefix or self.prefix, name)
        if key not in self._queues:
            defaults = self.queues_options.get(name, {}).get("default_job_options")
            self._queues[key] = Queue(name, self.client, key[0], defaults)
        return self._queues[key]

    def add(
        self, flow: Flow | dict[str, Any], parent: dict[str, Any] | None = None
    ) -> JobNode | None:
        """Adds one tree; `parent` ({"id", "queue"}) attaches its root under an existing job.
        Once `close()` was called it writes nothing and returns None, as Node's."""
        added = self.add_bulk([flow], parent)
        return added[0] if added else None

    def add_bulk(
        self, flows: Sequence[Flow | dict[str, Any]], parent: dict[str, Any] | None = None
    ) -> list[JobNode] | None:
        """Adds the trees, all or nothing; None once `close()` was called."""
        if self.closing:
            return None
        return self.add_encoded(self.encode(flows, parent))

    def encode(
        self, flows: Sequence[Flow | dict[str, Any]], parent: dict[str, Any] | None = None
    ) -> EncodedFlows:
        """Validates every node of the trees without writing anything."""
        encoded: list[EncodedJob] = []
        above: tuple[str, ...] = ()
        if parent is not None and parent.get("id") and parent.get("queue"):
            queue = str(parent["queue"])
            above = (f"{queue if ':' in queue else f'{self.prefix}:{queue}'}:{parent['id']}",)
        shapes = [
            self._encode(_as_flow(f, f"[{i}]"), parent, encoded, f"[{i}]", above)
            for i, f in enumerate(flows)
        ]
        return EncodedFlows(encoded, shapes)

    def add_encoded(self, flows: EncodedFlows, receipt: PushReceipt | None = None) -> list[JobNode]:
        """Writes trees checked by `encode`, in one atomic step; with `receipt`, as the
        push of an outbox entry."""
        encoded = flows.jobs
        if not encoded:
            return []
        first = QueueKeys(*encoded[0].queue_key.split(":", 1))
        result = run_add(self.client, first.meta, encoded, receipt, self.connection, "add flow")
        ids = iter(result)
        jobs = iter(encoded)
        return [self._build(shape, jobs, ids) for shape in flows.shapes]

    def _encode(
        self,
        flow: Flow,
        parent: dict[str, Any] | None,
        out: list[EncodedJob],
        path: str,
        ancestors: tuple[str, ...] = (),
    ) -> tuple:
        """`ancestors`: the job keys above this node (an existing parent the tree is
        attached under counts as a level)."""
        if len(ancestors) >= MAX_FLOW_DEPTH:
            raise InvalidJobOptions(
                f"flow node {path[:60]}...: the flow nests deeper than {MAX_FLOW_DEPTH} "
                "levels (MAX_FLOW_DEPTH), or one of its nodes contains itself"
            )
        queue = self.queue(flow.queue_name, flow.prefix)
        options = dict(flow.opts)
        if parent is not None:
            options["parent"] = parent
        options.setdefault("job_id", str(uuid.uuid4()))
        if flow.children and options.get("deduplication"):
            raise InvalidJobOptions(f"flow node {path}: a parent cannot use deduplication")
        try:
            job = encode_job(
                queue.keys.qualified,
                queue.prefix,
                flow.name,
                flow.data,
                options,
                queue.job_defaults(),
            )
        except InvalidJobOptions as error:
            raise InvalidJobOptions(f"flow node {path}: {error}") from None
        job.wait_children = bool(flow.children)
        key = queue.keys.job(job.job_id)
        if key in ancestors:
            raise InvalidJobOptions(
                f'flow node {path}: job "{job.job_id}" has the same queue and id as its '
                f'ancestor "{key}": a job cannot be its own parent'
            )
        out.append(job)
        me = {"id": job.job_id, "queue": queue.keys.qualified}
        children = [
            self._encode(
                _as_flow(child, f"{path}.children[{i}]"),
                me,
                out,
                f"{path}.children[{i}]",
                (*ancestors, key),
            )
            for i, child in enumerate(flow.children)
        ]
        return (queue, children)

    def _build(self, shape: tuple, jobs: Any, ids: Any) -> JobNode:
        queue, children = shape
        encoded = next(jobs)
        job_id = next(ids)
        job = Job(
            queue,
            job_id,
            {
                "name": encoded.name,
                "data": encoded.data_json,
                "timestamp": str(encoded.timestamp),
                "delay": str(encoded.delay),
                "priority": str(encoded.priority),
            },
        )
        job.opts = encoded.opts
        job.parent_key = encoded.parent_key
        job.parent = encoded.parent
        return JobNode(job, [self._build(child, jobs, ids) for child in children])

    def get_flow(
        self,
        queue_name: str,
        job_id: str,
        depth: int = 10,
        max_children: int = 100,
        prefix: str | None = None,
    ) -> JobNode | None:
        """Reads a job and its children (down to `depth` levels, at most
        `max_children` per parent) from Redis; None once `close()` was called."""
        if self.closing:
            return None
        queue = self.queue(queue_name, prefix)
        job = queue.get_job(job_id)
        if job is None:
            return None
        return self._read_tree(job, depth, max_children)

    def _read_tree(self, job: Job, depth: int, max_children: int) -> JobNode:
        node = JobNode(job)
        if depth <= 0:
            return node
        child_keys = _child_keys(self.client, job.key, max_children)
        pipe = self.client.pipeline(transaction=False)
        parsed = []
        for child_key in child_keys:
            prefix, name, child_id = split_job_key(child_key)
            parsed.append((prefix, name, child_id))
            pipe.hgetall(child_key)
        for (prefix, name, child_id), fields in zip(parsed, pipe.execute(), strict=True):
            if fields:
                child = Job(self.queue(name, prefix), child_id, fields)
                node.children.append(self._read_tree(child, depth - 1, max_children))
        return node

    def close(self) -> None:
        self.closing = True
        if self.connection is None or isinstance(self.connection, str):
            self.client.close()


def _child_keys(client: redis.Redis, job_key: str, limit: int) -> list[str]:
    """Keys of a parent's children, finished ones first, at most `limit`."""
    keys: list[str] = []
    scans = (
        (client.hscan, f"{job_key}:processed"),
        (client.hscan, f"{job_key}:failed"),
        (client.sscan, f"{job_key}:dependencies"),
    )
    for index, (scan, key) in enumerate(scans):
        if index == 2:
            keys.extend(client.zrange(f"{job_key}:unsuccessful", 0, max(limit - len(keys), 1) - 1))
        cursor = 0
        while len(keys) < limit:
            cursor, page = scan(key, cursor, count=limit)
            keys.extend(page)
            if cursor == 0:
                break
    return list(dict.fromkeys(keys))[:limit]
