"""OpenTelemetry spans (optional): the producer's trace continues in the worker via `tm`.

OpenTelemetry is an optional extra of flowjobs; the test tooling installs its SDK, so
this runs in CI. Spans are opt-in (`telemetry.enable(provider)`), as in BullMQ.
"""

from __future__ import annotations

import json

import pytest
from opentelemetry import trace
from opentelemetry.sdk import trace as sdk_trace
from opentelemetry.sdk.trace import export
from opentelemetry.sdk.trace.export import in_memory_span_exporter as in_memory

from tests.helpers import wait_for

_EXPORTER = in_memory.InMemorySpanExporter()


_PROVIDER = sdk_trace.TracerProvider()
_PROVIDER.add_span_processor(export.SimpleSpanProcessor(_EXPORTER))


@pytest.fixture
def spans():
    from flowjobs.engine import telemetry

    telemetry.enable(_PROVIDER)  # opt-in, and only for this test: nothing global
    yield _EXPORTER
    telemetry.disable()


def test_a_job_carries_its_trace_from_producer_to_worker(spans, queue, make_worker):
    spans.clear()
    tracer = _PROVIDER.get_tracer("test")
    with tracer.start_as_current_span("request") as request:
        job = queue.add("render", {"id": 7})
    carrier = json.loads(queue.get_job(job.id).opts["tm"])
    assert f"{request.get_span_context().trace_id:032x}" in carrier["traceparent"]

    def process(job):
        current = trace.get_current_span().get_span_context()
        return f"{current.trace_id:032x}"

    make_worker("q", process)
    wait_for(lambda: queue.get_job_state(job.id) == "completed")
    wait_for(lambda: any(s.name == "process q" for s in spans.get_finished_spans()))
    by_name = {s.name: s for s in spans.get_finished_spans()}
    add, consume = by_name["add q.render"], by_name["process q"]
    trace_id = request.get_span_context().trace_id
    assert (
        add.kind == trace.SpanKind.PRODUCER
        and add.parent.span_id == request.get_span_context().span_id
    )
    assert consume.kind == trace.SpanKind.CONSUMER
    assert consume.context.trace_id == trace_id
    assert consume.parent.span_id == add.context.span_id
    assert consume.attributes["bullmq.job.id"] == job.id
    # a sync processor runs in a worker thread inside the consumer span
    assert queue.get_job(job.id).returnvalue == f"{trace_id:032x}"


def test_a_failing_job_marks_its_span(spans, queue, make_worker):
    spans.clear()

    def process(job):
        raise ValueError("broken")

    job = queue.add("x")
    make_worker("q", process)
    wait_for(lambda: queue.get_job_state(job.id) == "failed")
    wait_for(lambda: any(s.name == "process q" for s in spans.get_finished_spans()))
    [consume] = [s for s in spans.get_finished_spans() if s.name == "process q"]
    assert consume.status.status_code == trace.StatusCode.ERROR
    assert consume.events[0].name == "exception"
