"""A throwaway Django project that uses an INSTALLED flowjobs, as a new user would.

Run by the python of a venv that has the flowjobs wheel installed (never the source
tree): `.ci/package` does that for each supported corner (Python x Django). It follows
the README's "Install" steps in a temporary directory outside the repository:

1. INSTALLED_APPS + the URL include + FLOWJOBS settings, a `shop` app with `jobs.py`;
2. `manage.py check` and `migrate` (SQLite);
3. a flow (an order waiting on two steps in another queue) through `enqueue_flow`;
4. `manage.py runworker --burst` runs it;
5. the flow's tree in the admin answers 200 with the flow in it;
6. on Django 5.2, the django.tasks backend is refused with a clear error.

Exit status 0 and a last line `smoke ok ...` when every step held. Needs `redis-server`
on PATH (it starts a private one on a free port).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

SETTINGS = """
SECRET_KEY = "smoke-test-only"
DEBUG = False
ALLOWED_HOSTS = ["testserver", "127.0.0.1", "localhost"]
USE_TZ = True
INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "flowjobs",
    "shop",
]
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]
ROOT_URLCONF = "smokesite.urls"
TEMPLATES = [{
    "BACKEND": "django.template.backends.django.DjangoTemplates",
    "DIRS": [],
    "APP_DIRS": True,
    "OPTIONS": {"context_processors": [
        "django.template.context_processors.request",
        "django.contrib.auth.context_processors.auth",
        "django.contrib.messages.context_processors.messages",
    ]},
}]
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": "db.sqlite3"}}
STATIC_URL = "static/"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
FLOWJOBS = {"REDIS_URL": "%(redis_url)s"}
"""

URLS = """
from django.contrib import admin
from django.urls import include, path

urlpatterns = [
    path("admin/", admin.site.urls),
    path("flowjobs/", include("flowjobs.urls")),
]
"""

JOBS = """
from flowjobs import processor


@processor("smoke-steps")
def step(job):
    return {"step": job.data["step"]}


@processor("smoke-orders")
def order(job):
    steps = sorted(value["step"] for value in job.get_children_values().values())
    return {"order": job.data["order"], "steps": steps}
"""

MANAGE = """
import os
import sys

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "smokesite.settings")
from django.core.management import execute_from_command_line

execute_from_command_line(sys.argv)
"""

ENQUEUE = """
from django.db import transaction
from flowjobs import Flow
from flowjobs.enqueue import enqueue_flow

with transaction.atomic():
    enqueue_flow(Flow("order", "smoke-orders", {"order": 7}, job_id="order-7", children=[
        Flow("charge", "smoke-steps", {"step": "charge"}, job_id="charge-7"),
        Flow("reserve", "smoke-steps", {"step": "reserve"}, job_id="reserve-7"),
    ]), on_commit=True)
print("enqueued")
"""

CHECK = """
import json
import flowjobs
from django.contrib.auth import get_user_model
from django.test import Client
from flowjobs.conf import get_queue
from flowjobs.models import JobRecord

root = get_queue("smoke-orders").get_job("order-7")
assert root is not None, "the flow's root job is gone from Redis"
assert root.get_state() == "completed", root.get_state()
assert root.returnvalue == {"order": 7, "steps": ["charge", "reserve"]}, root.returnvalue

record = JobRecord.objects.get(queue="smoke-orders", job_id="order-7")
User = get_user_model()
User.objects.create_superuser("admin", "admin@example.com", "pw")
client = Client()
assert client.login(username="admin", password="pw")
page = client.get(f"/admin/flowjobs/jobrecord/{record.pk}/tree/")
text = page.content.decode()
assert page.status_code == 200, page.status_code
for job_id in ("order-7", "charge-7", "reserve-7"):
    assert job_id in text, f"{job_id} is not on the flow's tree page"
print(json.dumps({"flowjobs": flowjobs.__file__, "version": flowjobs.__version__}))
"""


# On Django 5.2: the django.tasks backend refuses clearly, everything else works.
TASKS_ON_OLD_DJANGO = """
import django
from django.core.exceptions import ImproperlyConfigured
from django.test import override_settings
from flowjobs.checks import check_tasks_backend

tasks = {"default": {"BACKEND": "flowjobs.backends.FlowJobsBackend"}}
with override_settings(TASKS=tasks):
    (error,) = check_tasks_backend()
assert error.id == "flowjobs.E030" and "Django 6.0" in error.msg, error
try:
    import flowjobs.backends
except ImproperlyConfigured as refused:
    assert "needs Django 6.0" in str(refused) and django.get_version() in str(refused), refused
else:
    raise AssertionError("flowjobs.backends imported on Django " + django.get_version())
print("tasks backend refused clearly")
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run(project: Path, env: dict[str, str], *args: str, timeout: float = 120) -> str:
    result = subprocess.run(
        [sys.executable, *args],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if result.returncode != 0:
        sys.stderr.write(f"$ {' '.join(args)}\n{result.stdout}\n{result.stderr}\n")
        raise SystemExit(f"smoke FAILED at: {' '.join(args[:3])}")
    return result.stdout


def main() -> None:
    import django

    workdir = Path(tempfile.mkdtemp(prefix="flowjobs-smoke-"))
    if REPO in workdir.parents:
        raise SystemExit("the smoke project must live outside the repository")
    port = free_port()
    redis = subprocess.Popen(
        [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(workdir),
        ],
        stdout=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise SystemExit("redis-server did not start") from None
                time.sleep(0.05)  # waiting for a server we started

        project = workdir / "project"
        (project / "smokesite").mkdir(parents=True)
        (project / "shop").mkdir()
        (project / "manage.py").write_text(textwrap.dedent(MANAGE))
        (project / "smokesite" / "__init__.py").write_text("")
        settings = SETTINGS % {"redis_url": f"redis://127.0.0.1:{port}/0"}
        (project / "smokesite" / "settings.py").write_text(settings)
        (project / "smokesite" / "urls.py").write_text(URLS)
        (project / "shop" / "__init__.py").write_text("")
        (project / "shop" / "jobs.py").write_text(JOBS)

        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("PYTHON", "DJANGO", "FLOWJOBS"))
        }
        env["PYTHONNOUSERSITE"] = "1"
        run(project, env, "manage.py", "check", "--fail-level", "ERROR")
        run(project, env, "manage.py", "migrate", "--noinput", "-v", "0")
        run(project, env, "manage.py", "shell", "-c", ENQUEUE)
        run(project, env, "manage.py", "runworker", "--burst", "--concurrency", "4")
        run(project, env, "manage.py", "syncjobs", "--once")
        if django.VERSION < (6, 0):
            run(project, env, "manage.py", "shell", "-c", TASKS_ON_OLD_DJANGO)
        where = json.loads(
            run(project, env, "manage.py", "shell", "-c", CHECK).strip().splitlines()[-1]
        )
        if REPO in Path(where["flowjobs"]).resolve().parents:
            raise SystemExit(f"flowjobs was imported from the source tree: {where['flowjobs']}")
        print(
            f"smoke ok: Python {sys.version.split()[0]}, Django {django.get_version()}, "
            f"flowjobs {where['version']} from {where['flowjobs']}"
        )
    finally:
        redis.terminate()
        redis.wait(10)
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
