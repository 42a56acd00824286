"""bench_site's settings (bench/bench_site/settings.py: same database, same `Row`,
persistent connections) for the W6 anchors, without the flowjobs app, with Celery's
settings (namespace CELERY_) and django-tasks-db as the TASKS backend.

Environment, on top of bench_site's: W6_CELERY_DB_REUSE_MAX (unset: Celery's default,
its Django fixup closes the database connection before and after every task).
"""

import os

from bench_site.settings import *  # noqa: F403
from bench_site.settings import FLOWJOBS, INSTALLED_APPS

INSTALLED_APPS = [app for app in INSTALLED_APPS if app != "flowjobs"] + ["django_tasks_db"]

TASKS = {"default": {"BACKEND": "django_tasks_db.DatabaseBackend", "QUEUES": ["default"]}}

# Celery as the harness's celery contestant runs it (shared/bench-anchors/impl/celery_app.py):
# Redis broker and result backend, JSON only, the worker leaves root logging alone.
CELERY_BROKER_URL = FLOWJOBS["REDIS_URL"]
CELERY_RESULT_BACKEND = FLOWJOBS["REDIS_URL"]
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_DEFAULT_QUEUE = "bench-orm"
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
if os.environ.get("W6_CELERY_DB_REUSE_MAX"):
    CELERY_DB_REUSE_MAX = int(os.environ["W6_CELERY_DB_REUSE_MAX"])
