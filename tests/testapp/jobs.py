"""Processors used by tests/django (discovered by flowjobs' autodiscovery)."""

from __future__ import annotations

import time
from typing import Any

import redis
from django.db import connection

from flowjobs import Job, processor
from flowjobs.conf import settings

from .models import Note


def _client() -> redis.Redis:
    return redis.Redis.from_url(settings().REDIS_URL, decode_responses=True)


@processor("fj-echo")
def echo(job: Job) -> Any:
    return {"echo": job.data}


@processor("fj-named", name="add")
def add(job: Job, token: str) -> int:
    assert token, "the worker passes the lock token to two-argument processors"
    return job.data["a"] + job.data["b"]


@processor("fj-named", name="upper")
async def upper(job: Job) -> str:
    return job.data["text"].upper()


@processor("fj-peek")
def state_of(job: Job) -> str | None:
    """The state of the job whose id the data names, as this job runs."""
    return job.queue.get_job_state(job.data["id"]) if job.data.get("id") else None


@processor("fj-slow")
def slow(job: Job) -> str:
    """Says it started, then blocks until the test releases it (no sleeps)."""
    client = _client()
    try:
        client.rpush(f"{job.prefix}:fj-test:started", job.id)
        deadline = time.monotonic() + 60
        while not client.blpop([f"{job.prefix}:fj-test:release"], timeout=1):
            if time.monotonic() > deadline:
                raise RuntimeError("never released")
    finally:
        client.close()
    return "finished"


@processor("fj-orm")
def write_note(job: Job) -> int:
    Note.objects.create(text=str(job.data.get("text", job.id)))
    return Note.objects.count()


@processor("fj-orm", name="sabotage")
def sabotage(job: Job) -> str:
    """Breaks this thread's database connection behind Django's back."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_terminate_backend(pg_backend_pid())")
        return "terminated"  # not reached: the server drops the connection
    connection.ensure_connection()
    connection.connection.close()
    return "closed"


@processor("fj-isolated")
def isolated(job: Job) -> Any:
    """Run by `runworker --pool=process`: reports its pid; dies hard when asked to."""
    import os

    if job.data.get("crash"):
        os._exit(3)
    if job.data.get("fail"):
        raise ValueError(job.data["fail"])
    return {"pid": os.getpid(), "notes": Note.objects.count()}
