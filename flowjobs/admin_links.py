"""Link your own admin to the jobs: a column (or read-only field) that shows the job
whose id one of your fields holds, linked to its page in the flowjobs admin, or to
its flow's tree.

    from flowjobs.admin_links import job_link

    @admin.register(Order)
    class OrderAdmin(admin.ModelAdmin):
        list_display = ("id", "status", job_link("job_id", queue="orders"),
                        job_link("job_id", queue="orders", flow=True))
        readonly_fields = (job_link("job_id", queue="orders"),)

The job is found in the mirror (``JobRecord``) by its id (and queue, when given), so
store a job id you chose (``enqueue(..., job_id=f"order-{order.pk}")``): the
enqueue helpers return None when the write waits for the commit. One query per row.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.db.models import Model
from django.urls import reverse
from django.utils.html import format_html

from . import conf
from .models import JobRecord

__all__ = ["find_job", "flow_admin_url", "job_admin_url", "job_link"]


def find_job(job_id: Any, queue: str | None = None) -> JobRecord | None:
    """The mirrored job with this id (in ``queue``, when given), newest first."""
    if job_id in (None, ""):
        return None
    rows = JobRecord.objects.filter(prefix=conf.settings().PREFIX, job_id=str(job_id))
    if queue is not None:
        rows = rows.filter(queue=queue)
    return rows.order_by("-created_at", "-pk").first()


def job_admin_url(job_id: Any, queue: str | None = None) -> str | None:
    """The job's page in the admin, or None when the mirror does not know it (yet)."""
    record = find_job(job_id, queue)
    return reverse("admin:flowjobs_jobrecord_detail", args=[record.pk]) if record else None


def flow_admin_url(job_id: Any, queue: str | None = None) -> str | None:
    """The tree of the flow the job belongs to (opened at the job), or None."""
    record = find_job(job_id, queue)
    return reverse("admin:flowjobs_jobrecord_tree", args=[record.pk]) if record else None


def job_link(
    field: str,
    queue: str | None = None,
    *,
    flow: bool = False,
    description: str | None = None,
) -> Callable[[Model], str]:
    """A ``list_display`` / ``readonly_fields`` entry: the job whose id is in ``field``
    (an attribute, or a method taking no argument), with its state, linked to its
    page (``flow=True``: to its flow's tree)."""

    def column(obj: Model) -> str:
        job_id = getattr(obj, field, None)
        if callable(job_id):
            job_id = job_id()
        if job_id in (None, ""):
            return "-"
        record = find_job(job_id, queue)
        if record is None:
            return format_html('<span title="not in the job mirror (yet)">{}</span>', job_id)
        name = "tree" if flow else "detail"
        url = reverse(f"admin:flowjobs_jobrecord_{name}", args=[record.pk])
        state_css = record.state.replace("-", "")
        return format_html(
            '<a href="{}">{}</a> <span class="fj-badge fj-state-{}">{}</span>',
            url,
            "flow" if flow else record.job_id,
            state_css,
            record.state,
        )

    column.short_description = description or ("flow" if flow else "job")  # type: ignore[attr-defined]
    column.__name__ = f"{field}_{'flow' if flow else 'job'}_link"
    return column
