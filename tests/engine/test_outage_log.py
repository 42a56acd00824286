"""OutageLog: one warning when Redis is lost and one info line when it is back, also when
connections from before a half-open cut time out only after Redis is back."""

from __future__ import annotations

import logging

import pytest

from flowjobs.engine.connection import OutageLog


@pytest.fixture
def lines(caplog: pytest.LogCaptureFixture):
    caplog.set_level(logging.DEBUG, logger="flowjobs.test-outage")

    def read() -> list[tuple[str, str]]:
        return [
            (record.levelname, record.getMessage().split(" (")[0].split(" after")[0])
            for record in caplog.records
            if record.levelno >= logging.INFO
        ]

    return read


def test_a_late_failure_of_an_old_connection_is_the_same_outage(lines):
    log = OutageLog(logging.getLogger("flowjobs.test-outage"), "redis://r", settle_s=60)
    log.lost(TimeoutError("held"))
    log.lost(TimeoutError("held again"))
    log.back()
    log.lost(TimeoutError("a socket from the outage times out late"))
    log.back()
    assert lines() == [
        ("WARNING", "lost Redis at redis://r"),
        ("INFO", "Redis at redis://r is back"),
    ]


def test_a_loss_after_the_settle_window_is_a_new_outage(lines):
    log = OutageLog(logging.getLogger("flowjobs.test-outage"), "redis://r", settle_s=0)
    log.lost(ConnectionError("refused"))
    log.back()
    log.lost(ConnectionError("refused"))
    log.back()
    assert [level for level, _ in lines()] == ["WARNING", "INFO", "WARNING", "INFO"]


def test_a_quiet_loss_that_lasts_is_reported_after_all(lines):
    log = OutageLog(logging.getLogger("flowjobs.test-outage"), "redis://r", settle_s=5)
    log.lost(ConnectionError("refused"))
    log.back()
    log.lost(ConnectionError("refused"))  # within the window: quiet so far
    assert [level for level, _ in lines()] == ["WARNING", "INFO"]
    log.since -= 6  # the loss has now lasted longer than the window
    log.lost(ConnectionError("still refused"))
    log.back()
    assert [level for level, _ in lines()] == ["WARNING", "INFO", "WARNING", "INFO"]
