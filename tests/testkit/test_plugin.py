"""The pytest plugin costs nothing until a fixture asks for it, and says how to get
Redis when there is none."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from flowjobs.testing import RedisServerMissing
from flowjobs.testing.server import TestRedis

REPO = Path(__file__).resolve().parents[2]


def _pytest(directory: Path, test_source: str, **env: str) -> subprocess.CompletedProcess[str]:
    (directory / "test_it.py").write_text(textwrap.dedent(test_source))
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "flowjobs.testing.pytest_plugin",
            "test_it.py",
        ],
        cwd=directory,
        env={
            **os.environ,
            "PYTHONPATH": str(REPO),
            "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1",
            **env,
        },
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_plugin_starts_nothing_until_a_fixture_is_requested(tmp_path):
    result = _pytest(
        tmp_path,
        """
        import subprocess, sys

        def _redis_servers():
            out = subprocess.run(["pgrep", "-P", str(__import__("os").getpid()), "redis-server"],
                                 capture_output=True, text=True).stdout
            return out.split()

        def test_unused():
            assert "flowjobs.testing.server" not in sys.modules
            assert "flowjobs.conf" not in sys.modules and "django.conf" not in sys.modules
            assert _redis_servers() == []

        def test_used(flowjobs_redis):
            import redis
            assert redis.Redis.from_url(flowjobs_redis.url).ping()
            assert len(_redis_servers()) == 1
        """,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 passed" in result.stdout


def test_missing_redis_server_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.delenv("FLOWJOBS_TEST_REDIS_URL", raising=False)
    monkeypatch.setenv("FLOWJOBS_REDIS_SERVER", str(tmp_path / "no-redis-server"))
    with pytest.raises(RedisServerMissing, match="apt-get install redis-server"):
        TestRedis()
    result = _pytest(
        tmp_path,
        """
        def test_needs_redis(flowjobs_redis):
            pass
        """,
        FLOWJOBS_REDIS_SERVER=str(tmp_path / "no-redis-server"),
    )
    assert result.returncode == 1
    assert "the flowjobs test kit needs" in result.stdout and "brew install redis" in result.stdout


def test_an_existing_redis_can_be_used_instead(flowjobs_redis, monkeypatch):
    monkeypatch.setenv("FLOWJOBS_TEST_REDIS_URL", flowjobs_redis.url)
    server = TestRedis()
    assert server.url == flowjobs_redis.url and not server.private
    server.close()  # not ours: stays up
    with flowjobs_redis.client() as client:
        assert client.ping()
