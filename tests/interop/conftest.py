"""Fixtures for the interop tests: real Node.js BullMQ (and bullmq-py) on the suite's Redis.

Every test in this directory is marked `interop`. The Node side needs
`npm ci` in tests/interop; when node_modules is missing the tests FAIL with
that instruction (CI installs it), they are never skipped.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from .flowjobs_side import FlowjobsHarness
from .node import (
    BullmqPyHarness,
    HarnessError,
    NodeHarness,
    check_node_modules,
    ensure_bullmq_py_venv,
    node_binary,
)

INTEROP_DIR = Path(__file__).resolve().parent


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "interop: runs against real Node.js bullmq (tests/interop/package.json)",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if INTEROP_DIR in Path(item.fspath).resolve().parents:
            item.add_marker(pytest.mark.interop)


@pytest.fixture(scope="session")
def node_side() -> str:
    """Fail (not skip) when Node.js or the pinned npm packages are missing."""
    try:
        node = node_binary()
    except HarnessError as exc:
        pytest.fail(str(exc), pytrace=False)
    problem = check_node_modules()
    if problem:
        pytest.fail(problem, pytrace=False)
    return node


@pytest.fixture
def node(node_side: str, redis_url: str, prefix: str) -> Iterator[NodeHarness]:
    """Node.js BullMQ processes on this test's Redis and key prefix; all stopped at the end."""
    harness = NodeHarness(redis_url, prefix)
    try:
        yield harness
    finally:
        harness.close()


@pytest.fixture
def flowjobs(redis_url: str, prefix: str) -> Iterator[FlowjobsHarness]:
    """The flowjobs engine (in this process) on the same Redis and prefix as `node`."""
    harness = FlowjobsHarness(redis_url, prefix)
    try:
        yield harness
    finally:
        harness.close()


@pytest.fixture(params=["node->flowjobs", "flowjobs->node"])
def sides(
    request: pytest.FixtureRequest, node: NodeHarness, flowjobs: FlowjobsHarness
) -> tuple[NodeHarness | FlowjobsHarness, NodeHarness | FlowjobsHarness]:
    """(producer side, worker side): each test using it runs in both directions."""
    return (node, flowjobs) if request.param == "node->flowjobs" else (flowjobs, node)


@pytest.fixture(scope="session")
def bullmq_py_python() -> Path:
    """The python of a scratch virtualenv holding the pinned PyPI `bullmq` (made once)."""
    try:
        return ensure_bullmq_py_venv()
    except HarnessError as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture
def bullmq_py(bullmq_py_python: Path, redis_url: str, prefix: str) -> Iterator[BullmqPyHarness]:
    harness = BullmqPyHarness(bullmq_py_python, redis_url, prefix)
    try:
        yield harness
    finally:
        harness.close()


@pytest.fixture
def r(redis_url: str) -> Iterator[redis.Redis]:
    """A plain decoded client for asserting on raw Redis state."""
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        yield client
    finally:
        client.close()
