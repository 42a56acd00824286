import json
from typing import Any
from tests.helpers import wait_for


def test_scratch(node: Any, flowjobs: Any, r: Any) -> None:
    out = {}
    for side in (node, flowjobs):
        q = f"s-{side.side}"
        side.producer.upsertJobScheduler(
            queue=q, id="ev", repeat={"every": 300},
            template={"name": "tock", "data": {"n": 2}, "opts": {"attempts": 2, "keepLogs": 5, "failParentOnFailure": False, "removeOnComplete": 10}},
        )
        w = side.worker({"queue": q})
        w.expect_count("completed", 2)
        ids = [l["id"] for l in w.where("process")][:3]
        out[side.side] = {i: {k: (json.loads(v) if k == "opts" else v) for k, v in r.hgetall(f"{side.prefix}:{q}:{i}").items()} for i in ids}
        out[side.side]["sched"] = r.hgetall(f"{side.prefix}:{q}:repeat:ev")
    print(json.dumps(out, indent=1, sort_keys=True))
    assert 0
