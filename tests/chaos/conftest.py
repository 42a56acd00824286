"""Chaos fixtures: a figures report printed at the end of the run."""

from __future__ import annotations

from collections.abc import Callable

import pytest

_FIGURES: list[tuple[str, str, object]] = []


@pytest.fixture
def report(request: pytest.FixtureRequest, record_property) -> Callable[[str, object], None]:
    """report(name, value): a figure of this test (kills survived, duplicates seen, ...),
    kept in the JUnit XML and printed in the terminal summary."""

    def add(name: str, value: object) -> None:
        record_property(name, value)
        _FIGURES.append((request.node.name, name, value))

    return add


def pytest_terminal_summary(terminalreporter) -> None:
    figures = list(_FIGURES)
    for report in terminalreporter.stats.get("passed", []) + terminalreporter.stats.get(
        "failed", []
    ):
        # under xdist the figures travel with the test reports
        if "chaos" in report.nodeid or "scale" in report.nodeid:
            for name, value in report.user_properties:
                entry = (report.nodeid.rsplit("::", 1)[-1], name, value)
                if entry not in figures:
                    figures.append(entry)
    if figures:
        terminalreporter.section("chaos figures")
        for test, name, value in figures:
            terminalreporter.write_line(f"{test}: {name} = {value}")
