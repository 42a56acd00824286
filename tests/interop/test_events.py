"""The events stream: what each side writes, and what each side's QueueEvents reads.

One scenario (progress + completion, retry then final failure, a delayed add,
a processor-driven moveToDelayed) runs twice: all-Node on one queue and
all-flowjobs on another. A Node QueueEvents and a flowjobs QueueEvents listen to
both queues. Per job, the sequence of events and their fields must be the same
whoever wrote them and whoever reads them.
"""

from __future__ import annotations

from typing import Any

from .flowjobs_side import FlowjobsHarness
from .node import LineLog, NodeHarness

BEHAVIOURS = {
    "ok": {"action": "return", "value": {"v": 1}, "progress": {"pct": 50}},
    "bad": {"action": "throw", "message": "bad thing"},
    "later": {"action": "echo"},
    "snooze": [{"action": "delay", "delayMs": 200}, {"action": "return", "value": "woke"}],
}


def run_scenario(side: NodeHarness | FlowjobsHarness, queue: str) -> dict[str, str]:
    """Adds the four jobs, processes them on the same side; returns name -> id."""
    p = side.producer
    ids = {
        "ok": p.add(queue=queue, name="ok", data={"k": 1})["id"],
        "bad": p.add(queue=queue, name="bad", opts={"attempts": 2})["id"],
        "later": p.add(queue=queue, name="later", opts={"delay": 300})["id"],
        "snooze": p.add(queue=queue, name="snooze")["id"],
    }
    worker = side.worker({"queue": queue, "doneAfter": 4, "behaviours": BEHAVIOURS})
    worker.expect("done", timeout=30)
    return ids


def per_job(log: LineLog, ids: dict[str, str]) -> dict[str, list[tuple[str, dict[str, Any]]]]:
    """Events grouped by job (keyed by job name), with ids and times normalised."""
    names = {job_id: name for name, job_id in ids.items()}
    grouped: dict[str, list[tuple[str, dict[str, Any]]]] = {name: [] for name in ids}
    for line in log.queue_events():
        fields = dict(line["fields"])
        job_id = fields.pop("jobId", None)
        if job_id is None:
            continue
        if line["name"] == "delayed":
            assert isinstance(fields["delay"], int) and fields["delay"] > 1_700_000_000_000
            fields["delay"] = "<due ms>"
        grouped[names[job_id]].append((line["name"], fields))
    return grouped


EXPECTED = {
    "ok": [
        ("added", {"name": "ok"}),
        ("waiting", {}),
        ("active", {"prev": "waiting"}),
        ("progress", {"data": {"pct": 50}}),
        ("completed", {"returnvalue": {"v": 1}, "prev": "active"}),
    ],
    "bad": [
        ("added", {"name": "bad"}),
        ("waiting", {}),
        ("active", {"prev": "waiting"}),
        ("waiting", {"prev": "active"}),
        ("active", {"prev": "waiting"}),
        ("failed", {"failedReason": "bad thing", "prev": "active"}),
        ("retries-exhausted", {"attemptsMade": "2"}),
    ],
    "later": [
        ("added", {"name": "later"}),
        ("delayed", {"delay": "<due ms>"}),
        ("waiting", {"prev": "delayed"}),
        ("active", {"prev": "waiting"}),
        ("completed", {"returnvalue": {}, "prev": "active"}),
    ],
    "snooze": [
        ("added", {"name": "snooze"}),
        ("waiting", {}),
        ("active", {"prev": "waiting"}),
        ("delayed", {"delay": "<due ms>"}),
        ("waiting", {"prev": "delayed"}),
        ("active", {"prev": "waiting"}),
        ("completed", {"returnvalue": "woke", "prev": "active"}),
    ],
}


def test_both_queue_events_read_both_writers_the_same(
    node: NodeHarness, flowjobs: FlowjobsHarness
) -> None:
    listeners = {
        (reader.side, queue): reader.events({"queue": queue})
        for reader in (node, flowjobs)
        for queue in ("ev-node", "ev-flowjobs")
    }
    ids = {
        "ev-node": run_scenario(node, "ev-node"),
        "ev-flowjobs": run_scenario(flowjobs, "ev-flowjobs"),
    }
    for (reader, queue), log in listeners.items():
        for job, expected in EXPECTED.items():
            log.expect_queue_event(expected[-1][0], jobId=ids[queue][job])
        seen = per_job(log, ids[queue])
        for job, expected in EXPECTED.items():
            assert seen[job] == expected, f"{reader} reading {queue}, job {job}"
        log.expect_queue_event("drained")


def test_raw_stream_entries_have_the_same_field_order(
    node: NodeHarness, flowjobs: FlowjobsHarness, r: Any, prefix: str
) -> None:
    ids = {
        "ev-node": run_scenario(node, "ev-node"),
        "ev-flowjobs": run_scenario(flowjobs, "ev-flowjobs"),
    }

    def entries(queue: str) -> dict[str, list[list[str]]]:
        names = {job_id: name for name, job_id in ids[queue].items()}
        grouped: dict[str, list[list[str]]] = {}
        for _, fields in r.xrange(f"{prefix}:{queue}:events"):
            if "jobId" in fields:
                grouped.setdefault(names[fields["jobId"]], []).append(list(fields))
        return grouped

    assert entries("ev-flowjobs") == entries("ev-node")
