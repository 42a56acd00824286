"""Settings of the benchmark site: flowjobs with its DEFAULT settings (mirror on,
per-job logging as runworker sets it up), as a Django user runs it.

Environment: REDIS_URL (or REDIS_HOST/REDIS_PORT), BENCH_PREFIX [bull],
DATABASE_URL [a SQLite file in BENCH_SITE_DIR or the temp dir; W6 sets a PostgreSQL one].
"""

from __future__ import annotations

import os
import tempfile

import environ

env = environ.Env()

SECRET_KEY = "flowjobs-bench-not-secret"
DEBUG = False
USE_TZ = True
INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "flowjobs",
    "bench_site",
]
_SQLITE = os.path.join(os.environ.get("BENCH_SITE_DIR", tempfile.gettempdir()), "bench.sqlite3")
DATABASES = {"default": env.db_url("DATABASE_URL", default=f"sqlite:///{_SQLITE}")}
# persistent connections, as a production site configures them
DATABASES["default"]["CONN_MAX_AGE"] = None
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

_HOST = os.environ.get("REDIS_HOST", "127.0.0.1")
_PORT = os.environ.get("REDIS_PORT", "6390")
# W1.add.tasks: Django's Tasks API (Django 6.0+) on flowjobs, queue "bench-tasks" (its own: the backend runs it)
TASKS = {"default": {"BACKEND": "flowjobs.backends.FlowJobsBackend", "QUEUES": ["bench-tasks"]}}

FLOWJOBS = {
    "REDIS_URL": os.environ.get("REDIS_URL") or f"redis://{_HOST}:{_PORT}/0",
    "PREFIX": os.environ.get("BENCH_PREFIX", "bull"),
}
