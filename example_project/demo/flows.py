"""The demo flows, as ``Flow`` trees (added by ``manage.py loaddemo``)."""

from __future__ import annotations

from flowjobs import Flow


def report_flow(number: int) -> Flow:
    """A parent in ``reports`` waiting for two fetch children in ``report-fetch``."""
    return Flow(
        "render",
        "reports",
        {"title": f"weekly report #{number}"},
        children=[
            Flow("fetch", "report-fetch", {"source": "sales", "rows": 12}),
            Flow(
                "fetch",
                "report-fetch",
                {"source": "traffic", "rows": 30},
                attempts=3,
                backoff={"type": "exponential", "delay": 1000},
            ),
        ],
    )


def etl_flow(number: int) -> Flow:
    """extract -> transform -> load: each step is the single child of the next one."""
    extract = Flow("extract", "etl", {"records": 5 + number})
    transform = Flow("transform", "etl", {}, children=[extract])
    return Flow("load", "etl", {"table": f"facts_{number}"}, children=[transform])


def order_flow(number: int, sms_fails: bool) -> Flow:
    """Payment and stock must succeed; the SMS is optional (its failure is ignored)."""
    order = 1000 + number
    return Flow(
        "complete-order",
        "orders",
        {"order": order},
        children=[
            Flow("charge-payment", "payments", {"order": order, "amount": 42.5}),
            Flow("reserve-stock", "inventory", {"order": order, "items": 3}),
            Flow(
                "send-sms",
                "notifications",
                {"order": order, "phone": f"+1555000{number:04d}", "fail": sms_fails},
                ignore_dependency_on_failure=True,
            ),
        ],
    )


def map_reduce_flow(chunks: int, chunk_size: int = 1000) -> Flow:
    return Flow(
        "reduce",
        "mapreduce",
        {"chunks": chunks},
        children=[
            Flow("map", "mapreduce", {"start": i * chunk_size, "stop": (i + 1) * chunk_size})
            for i in range(chunks)
        ],
    )
