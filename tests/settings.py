"""Django settings for the test suite (SQLite by default, PostgreSQL via DATABASE_URL)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import environ

from tests.helpers import HAS_DJANGO_TASKS

env = environ.Env()

BASE_DIR = Path(__file__).resolve().parent
SECRET_KEY = "flowjobs-tests-not-secret"
DEBUG = False
ALLOWED_HOSTS = ["*"]
USE_TZ = True
TIME_ZONE = "UTC"

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "flowjobs",
    "tests.testapp",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]

ROOT_URLCONF = "tests.urls"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# A file, not ":memory:": worker subprocesses and live-server threads must see the
# same test database. The pid keeps concurrent test runs on one machine apart
# (pytest-xdist adds its own "_gwN" suffix on top).
_TMP = Path(tempfile.gettempdir())
_RUN = os.environ.get("FLOWJOBS_TEST_RUN_ID", str(os.getpid()))
DATABASES = {
    "default": env.db_url("DATABASE_URL", default=f"sqlite:///{_TMP / 'flowjobs-tests.sqlite3'}"),
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    DATABASES["default"]["TEST"] = {"NAME": str(_TMP / f"flowjobs-test-{_RUN}.sqlite3")}
else:
    DATABASES["default"]["TEST"] = {"NAME": f"test_{DATABASES['default']['NAME']}_{_RUN}"}

# FLOWJOBS_TEST_DB_POOL=N (PostgreSQL): connections through Django's pool (psycopg_pool),
# at most N of them, as a site that turns pooling on runs (tests/django/test_db_pool.py).
_POOL_SIZE = env.int("FLOWJOBS_TEST_DB_POOL", default=0)
if _POOL_SIZE and DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
    DATABASES["default"]["CONN_MAX_AGE"] = 0  # Django refuses persistent connections with a pool
    DATABASES["default"].setdefault("OPTIONS", {})["pool"] = {
        "min_size": 1,
        "max_size": _POOL_SIZE,
        "timeout": 10,
    }

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

STATIC_URL = "/static/"
STATIC_ROOT = str(_TMP / "flowjobs-tests-static")

# Never the shared Redis on 6379: tests point FLOWJOBS at their private server
# (fixtures in tests/django/conftest.py, env FLOWJOBS_REDIS_URL for subprocesses).
# Port 9 (discard) refuses connections, so a forgotten override fails loudly.
FLOWJOBS = {
    "REDIS_URL": env.str("FLOWJOBS_REDIS_URL", default="redis://127.0.0.1:9/0"),
    "MIRROR": env.bool("FLOWJOBS_MIRROR", default=False),
}

# django.tasks on flowjobs (tests/tasks, tasks in tests/taskapp); "default" stays Django's.
if HAS_DJANGO_TASKS:
    TASKS = {
        "default": {"BACKEND": "django.tasks.backends.immediate.ImmediateBackend"},
        "flowjobs": {
            "BACKEND": "flowjobs.backends.FlowJobsBackend",
            "QUEUES": ["tasks", "tasks-b"],
        },
    }

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {"flowjobs": {"handlers": ["console"], "level": "INFO"}},
}
