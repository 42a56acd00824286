"""Processors the test-kit tests run (queues named kit-*)."""

from __future__ import annotations

import threading
from typing import Any

from django.db import transaction

from flowjobs import Job, processor
from flowjobs.enqueue import enqueue
from tests.testapp.models import Note


@processor("kit-orders", name="confirm")
def confirm(job: Job) -> dict[str, Any]:
    # The note was created by the test, inside its transaction: only the test's own
    # connection can see it.
    note = Note.objects.get(pk=job.data["note"])
    Note.objects.create(text=f"confirmed {note.text}")
    return {"confirmed": note.text, "thread": threading.current_thread().name}


@processor("kit-orders", name="count-async")
async def count_async(job: Job) -> int:
    return await Note.objects.acount()


@processor("kit-orders", name="progress-async")
async def progress_async(job: Job) -> int:
    # the job's a* methods work although this runs on an event loop of its own, not the
    # worker's
    await job.aupdate_progress(50)
    await job.alog("half way")
    return await Note.objects.acount()


@processor("kit-flaky")
def flaky(job: Job) -> str:
    if job.attempts_made < job.data["fail_times"]:
        raise ConnectionError(f"flaky failure {job.attempts_made + 1}")
    return f"succeeded on attempt {job.attempts_made + 1}"


@processor("kit-parts", name="part")
def part(job: Job) -> int:
    if job.data.get("fail"):
        raise ValueError(f"part {job.data['n']} is broken")
    return job.data["n"]


@processor("kit-assemble", name="assemble")
def assemble(job: Job) -> int:
    return sum(job.get_children_values().values())


@processor("kit-forever")
def forever(job: Job) -> int:
    enqueue("kit-forever", "again", {"n": job.data["n"] + 1}, on_commit=False)
    return job.data["n"]


@processor("kit-chain", name="first")
def first(job: Job) -> str:
    # In production the block commits and the follow-up is enqueued; in a test it is
    # nested in the test's transaction, and run_jobs() plays the commit's part.
    with transaction.atomic():
        Note.objects.create(text="first")
        enqueue("kit-chain", "second", {}, on_commit=True)
    if job.data.get("then_fail"):
        with transaction.atomic():
            enqueue("kit-chain", "never", {}, on_commit=True)
            raise RuntimeError("rolled back: its on-commit enqueue must not happen")
    return "first"


@processor("kit-chain", name="second")
def second(job: Job) -> int:
    return Note.objects.filter(text="first").count()
