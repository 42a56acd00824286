"""Processors of the demo site: the patterns flows are made of.

- report generation: two ``fetch`` children (queue ``report-fetch``, async), one
  ``render`` parent (queue ``reports``) that combines their return values;
- ETL: ``extract`` -> ``transform`` -> ``load``, a chain (each step is the only child
  of the next) in queue ``etl``;
- order processing: ``charge-payment`` and ``reserve-stock`` must succeed, the
  ``send-sms`` child may fail without blocking the order
  (``ignore_dependency_on_failure``); the parent ``complete-order`` reports both;
- a step job (queue ``steps``) that keeps its progress in its data and sleeps between
  steps with ``move_to_delayed`` + ``DelayedError``;
- map-reduce: N ``map`` children, a ``reduce`` parent summing ``get_children_values()``.

``DEMO_JOB_SECONDS`` (setting/env) is how long each job pretends to work, so the
admin has something to show while a flow runs.
"""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

from django.conf import settings

from flowjobs import DelayedError, Job, UnrecoverableError, processor


def _work_seconds() -> float:
    base = float(getattr(settings, "DEMO_JOB_SECONDS", 0.5))
    return base * random.uniform(0.5, 1.5)


def _work() -> None:
    if seconds := _work_seconds():
        time.sleep(seconds)


# --------------------------------------------------------------------------- reports


@processor("report-fetch", name="fetch")
async def fetch(job: Job) -> dict[str, Any]:
    source = job.data["source"]
    for percent in (25, 50, 75):
        await asyncio.sleep(_work_seconds() / 4)
        await job.aupdate_progress(percent)
    await job.alog(f"fetched {source}")
    rows = [random.randint(1, 100) for _ in range(job.data.get("rows", 10))]
    await job.aupdate_progress(100)
    return {"source": source, "rows": len(rows), "total": sum(rows)}


@processor("reports", name="render")
def render(job: Job) -> dict[str, Any]:
    parts = list(job.get_children_values().values())
    _work()
    return {
        "report": job.data.get("title", "report"),
        "sources": sorted(part["source"] for part in parts),
        "total": sum(part["total"] for part in parts),
    }


# --------------------------------------------------------------------------- ETL chain


@processor("etl", name="extract")
def extract(job: Job) -> list[dict[str, Any]]:
    _work()
    return [{"id": i, "amount": i * 10} for i in range(job.data.get("records", 5))]


def _only_child_value(job: Job) -> Any:
    (value,) = job.get_children_values().values()
    return value


@processor("etl", name="transform")
def transform(job: Job) -> list[dict[str, Any]]:
    records = _only_child_value(job)
    _work()
    return [{**record, "amount_eur": round(record["amount"] * 0.92, 2)} for record in records]


@processor("etl", name="load")
def load(job: Job) -> dict[str, Any]:
    records = _only_child_value(job)
    _work()
    return {"loaded": len(records), "table": job.data.get("table", "facts")}


# --------------------------------------------------------------------------- orders


@processor("payments", name="charge-payment")
def charge_payment(job: Job) -> dict[str, Any]:
    _work()
    return {"charged": job.data["amount"], "order": job.data["order"]}


@processor("inventory", name="reserve-stock")
def reserve_stock(job: Job) -> dict[str, Any]:
    _work()
    return {"reserved": job.data["items"], "order": job.data["order"]}


@processor("notifications", name="send-sms")
def send_sms(job: Job) -> str:
    _work()
    if job.data.get("fail"):
        raise UnrecoverableError(f"SMS gateway refused {job.data['phone']}")
    return f"sms sent to {job.data['phone']}"


@processor("orders", name="complete-order")
def complete_order(job: Job) -> dict[str, Any]:
    done = job.get_children_values()
    ignored = job.get_ignored_children_failures()
    _work()
    return {
        "order": job.data["order"],
        "steps_done": len(done),
        "optional_failures": sorted(ignored.values()),
    }


# --------------------------------------------------------------------------- step job


@processor("steps", name="onboarding")
def onboarding(job: Job, token: str) -> dict[str, Any]:
    """Three steps with a pause between them; the job's data remembers where it is."""
    step = job.data.get("step", 1)
    pause_ms = int(job.data.get("pause_ms", 1000))
    _work()
    if step < 3:
        job.log(f"step {step} done")
        job.update_data({**job.data, "step": step + 1})
        job.update_progress(round(step * 100 / 3))
        job.move_to_delayed(int(time.time() * 1000) + pause_ms, token)
        raise DelayedError(f"step {step} done, step {step + 1} in {pause_ms} ms")
    job.log("step 3 done")
    job.update_progress(100)
    return {"user": job.data["user"], "steps": 3}


# --------------------------------------------------------------------------- map-reduce


@processor("mapreduce", name="map")
def map_chunk(job: Job) -> int:
    start, stop = job.data["start"], job.data["stop"]
    _work()
    return sum(n * n for n in range(start, stop))


@processor("mapreduce", name="reduce")
def reduce_sums(job: Job) -> dict[str, Any]:
    values = job.get_children_values()
    return {"chunks": len(values), "sum_of_squares": sum(values.values())}
