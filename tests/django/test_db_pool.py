"""runworker on a site that turns on Django's PostgreSQL connection pool (``OPTIONS
{"pool": ...}``, psycopg_pool): fewer connections than job threads, a connection killed
under a job, and the services process (outbox relay, mirror) on the same pool settings."""

from __future__ import annotations

import pytest

from flowjobs import conf
from flowjobs.models import JobRecord, OutboxEntry
from tests.helpers import leave_outbox_entry, skip_unless_postgresql, wait_for
from tests.testapp.models import Note

pytestmark = pytest.mark.django_db(transaction=True)


def test_runworker_on_a_pool_smaller_than_its_concurrency(start_worker, prefix: str):  # noqa: ANN001
    """Eight job threads share two pooled connections (each job hands its connection
    back when it ends, as Django does at a request's end); a job that kills its
    connection's server process costs that job only; the relay pushes an entry left
    behind and the mirror records every job, from the pool too."""
    skip_unless_postgresql("Django's connection pool is PostgreSQL's")
    orm, echo = conf.get_queue("fj-orm"), conf.get_queue("fj-echo")
    leave_outbox_entry(echo, "echo", {"left": 1}, "left-behind", prefix)
    notes = [orm.add("note", {"text": f"n{i}"}) for i in range(30)]
    sabotage = orm.add("sabotage", {})
    notes += [orm.add("note", {"text": f"n{i}"}) for i in range(30, 60)]

    worker = start_worker(
        "fj-orm",
        "fj-echo",
        "--concurrency",
        "8",
        env={"FLOWJOBS_TEST_DB_POOL": "2", "FLOWJOBS_MIRROR": "true"},
    )
    wait_for(
        lambda: all(orm.get_job_state(job.id) == "completed" for job in notes),
        timeout=60,
        message=worker.output,
    )
    assert orm.get_job_state(sabotage.id) in ("completed", "failed")
    assert Note.objects.count() == 60
    job = wait_for(lambda: (j := echo.get_job("left-behind")) and j.finished_on and j, timeout=30)
    assert job.returnvalue == {"echo": {"left": 1}}
    wait_for(lambda: not OutboxEntry.objects.exists(), timeout=10, message=worker.output)
    wait_for(
        lambda: (
            JobRecord.objects.filter(prefix=prefix, queue="fj-orm", state="completed").count() == 60
        ),
        timeout=30,
        message=lambda: (
            f"{list(JobRecord.objects.values_list('state', flat=True))}\n" + worker.output()
        ),
    )
    output = worker.output()
    assert "PoolTimeout" not in output and "couldn't get a connection" not in output, output
