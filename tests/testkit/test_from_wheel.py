"""The test kit as a user gets it: a throwaway project, the flowjobs WHEEL installed in a
venv outside the repository, its tests run with pytest-django and with Django's own
test runner (FlowJobsTestMixin), on SQLite and, with DATABASE_URL, on PostgreSQL."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import redis

from tests.packaging.wheel import uv
from tests.testkit.shop_project import write_project


def _database_env(wheel_python: Path) -> dict[str, str]:
    url = os.environ.get("DATABASE_URL", "")
    if not url.startswith(("postgres://", "postgresql://")):
        return {"SHOP_DATABASE": "sqlite"}
    # the wheel does not bring a PostgreSQL driver; a project on PostgreSQL installs one
    venv = wheel_python.parent.parent
    subprocess.run(
        [uv(), "pip", "install", "-q", "psycopg[binary]>=3.2"],
        env={**os.environ, "VIRTUAL_ENV": str(venv)},
        check=True,
        timeout=300,
    )
    parts = urlsplit(url)
    return {
        "SHOP_DATABASE": "postgresql",
        "SHOP_DB_NAME": parts.path.lstrip("/"),
        "SHOP_DB_USER": parts.username or "",
        "SHOP_DB_PASSWORD": parts.password or "",
        "SHOP_DB_HOST": parts.hostname or "127.0.0.1",
        "SHOP_DB_PORT": str(parts.port or 5432),
        "SHOP_DB_TEST_NAME": f"test_shop_{os.getpid()}",
    }


@pytest.fixture
def shop(wheel_python: Path, tmp_path: Path) -> dict:
    project = write_project(tmp_path / "shop")
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("PYTHON", "DJANGO_", "FLOWJOBS_", "PYTEST_", "VIRTUAL_ENV"))
    }
    env.update(_database_env(wheel_python), DJANGO_SETTINGS_MODULE="settings")
    return {"python": str(wheel_python), "dir": project, "env": env}


def _run(shop: dict, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [shop["python"], *args],
        cwd=shop["dir"],
        env={**shop["env"], **env},
        capture_output=True,
        text=True,
        timeout=300,
    )


ENTRY_POINT_PROBE = (
    "from importlib.metadata import entry_points; "
    "print([e.value for e in entry_points(group='pytest11') if e.name == 'flowjobs'])"
)


def _registered(shop: dict) -> bool:
    return (
        _run(shop, "-c", ENTRY_POINT_PROBE).stdout.strip() == "['flowjobs.testing.pytest_plugin']"
    )


def test_pytest_django_tests_use_the_kit_and_leave_no_keys(shop, redis_url):
    # The plugin comes from the wheel's pytest11 entry point: nothing named on the command line.
    # On the suite's own Redis (FLOWJOBS_TEST_REDIS_URL), to see what the tests leave behind.
    result = _run(shop, "-m", "pytest", "-q", FLOWJOBS_TEST_REDIS_URL=redis_url)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "8 passed" in result.stdout, result.stdout  # 5 pytest tests + 3 TestCase tests
    with redis.Redis.from_url(redis_url) as client:
        assert list(client.scan_iter(match="fjtest*")) == []


def test_django_test_runner_without_pytest(shop):
    # Its own private redis-server this time, found on PATH.
    result = _run(shop, "-m", "django", "test", "tests.test_with_testcase", "-v", "2")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Ran 3 tests" in result.stderr and "OK" in result.stderr, result.stderr


def test_plugin_is_registered_by_its_entry_point(shop):
    assert _registered(shop)
