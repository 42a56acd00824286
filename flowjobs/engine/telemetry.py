"""OpenTelemetry spans for adding and processing jobs, when `opentelemetry-api` is
installed (it is optional; without it these helpers do nothing).

The producer's trace context travels in the job's `tm` option, as BullMQ does it:
JSON text of the propagation carrier (`{"traceparent": ...}`). A worker continues
that trace in a `process <queue>` consumer span; a producer span is
`add <queue>.<job name>`.
"""

from __future__ import annotations

import contextvars
import json
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import TYPE_CHECKING, Any

try:
    from opentelemetry import propagate, trace
    from opentelemetry.trace import SpanKind, Status, StatusCode
except ImportError:  # pragma: no cover - depends on the environment
    trace = None  # type: ignore[assignment]

if TYPE_CHECKING:
    from .job import Job

ENABLED = trace is not None
TRACER_NAME = "flowjobs"


_provider: Any = None


def enable(tracer_provider: Any = None) -> None:
    """Turns spans on for this process (opt-in, as in BullMQ), with `tracer_provider` or
    OpenTelemetry's global one."""
    global _provider
    if trace is None:
        raise RuntimeError("telemetry needs opentelemetry-api (pip install opentelemetry-sdk)")
    _provider = tracer_provider or trace.get_tracer_provider()


def disable() -> None:
    global _provider
    _provider = None


def _tracing() -> bool:
    return _provider is not None


# what the span helpers give when telemetry is off: entering it costs next to nothing
# (they run once per job added and processed)
_NO_SPAN: AbstractContextManager[None] = nullcontext()


def add_span(queue_name: str, job_name: str) -> AbstractContextManager[str | None]:
    """A producer span around an add; yields the `tm` metadata to store with the job."""
    return _add_span(queue_name, job_name) if _tracing() else _NO_SPAN


@contextmanager
def _add_span(queue_name: str, job_name: str) -> Iterator[str | None]:
    tracer = _provider.get_tracer(TRACER_NAME)
    with tracer.start_as_current_span(
        f"add {queue_name}.{job_name}",
        kind=SpanKind.PRODUCER,
        attributes={
            "messaging.system": "bullmq",
            "messaging.operation": "add",
            "messaging.destination.name": queue_name,
            "bullmq.job.name": job_name,
        },
    ):
        carrier: dict[str, str] = {}
        propagate.inject(carrier)
        yield json.dumps(carrier) if carrier else None


def process_span(job: Job, queue_name: str) -> AbstractContextManager[None]:
    """A consumer span around a processor run, child of the producer's span."""
    return _process_span(job, queue_name) if _tracing() else _NO_SPAN


@contextmanager
def _process_span(job: Job, queue_name: str) -> Iterator[None]:
    parent = None
    metadata = job.opts.get("tm")
    if isinstance(metadata, str):
        try:
            carrier = json.loads(metadata)
        except ValueError:
            carrier = None
        if isinstance(carrier, dict):
            parent = propagate.extract(carrier)
    tracer = _provider.get_tracer(TRACER_NAME)
    with tracer.start_as_current_span(
        f"process {queue_name}",
        context=parent,
        kind=SpanKind.CONSUMER,
        record_exception=False,
        set_status_on_exception=False,
        attributes={
            "messaging.system": "bullmq",
            "messaging.operation": "process",
            "messaging.destination.name": queue_name,
            "bullmq.job.id": job.id,
            "bullmq.job.name": job.name,
            "bullmq.job.attempts_made": job.attempts_made,
        },
    ) as span:
        try:
            yield
        except BaseException as error:
            span.record_exception(error)
            span.set_status(Status(StatusCode.ERROR, str(error)))
            raise


def in_context(function: Callable[..., Any]) -> Callable[..., Any]:
    """`function` run in a copy of the current context (so a processor in a worker
    thread sees the span of its job); unchanged when telemetry is off."""
    if not _tracing():
        return function
    context = contextvars.copy_context()
    return lambda *args: context.run(function, *args)
