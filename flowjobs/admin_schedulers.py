"""Admin page for job schedulers: list (schedule, next run, last job), pause/resume,
remove and run now. Schedulers live in Redis only; each action calls the engine.

Permissions: pause and resume need ``flowjobs.pause_queue``, remove needs
``flowjobs.remove_job``, run now needs ``flowjobs.promote_job`` (it runs a job now).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import redis
from django.contrib import messages
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse

from . import mirror, registry
from .admin_views import (
    _context,
    _render,
    _require_view,
    _url,
    discovered_queues,
    has_action_permission,
    live_queue,
)
from .engine import FlowJobsError, Queue
from .models import JobRecord
from .scheduler_listing import SchedulerRow, scheduler_rows

if TYPE_CHECKING:
    from django.contrib.admin import ModelAdmin

# action -> (permission codename, label, what it does in words)
SCHEDULER_ACTIONS: dict[str, tuple[str, str, str]] = {
    "pause": ("pause_queue", "Pause", "It makes no more jobs until it is resumed."),
    "resume": ("pause_queue", "Resume", "Its next run is the next slot from now."),
    "run": ("promote_job", "Run now", "One extra job from its template, now; the schedule stays."),
    "remove": (
        "remove_job",
        "Remove",
        "It is deleted with its pending run. If it is declared in the settings, the next "
        "worker start creates it again.",
    ),
}


@dataclass
class _Listed:
    row: SchedulerRow
    last_job: JobRecord | None
    actions: list[tuple[str, str, str]]  # (action, label, url)


def _queue_names() -> list[str]:
    config = mirror.mirror_settings()
    client = mirror.redis_client(config.redis_url)
    discovered = discovered_queues(client, config.redis_url, config.prefix)
    return sorted(set(discovered) | set(registry.queue_names()))


def _last_jobs(rows: list[SchedulerRow]) -> dict[tuple[str, str], JobRecord]:
    """The latest mirrored run of each scheduler that has started (its iterations are
    `repeat:<id>:<ms>`)."""
    found: dict[tuple[str, str], JobRecord] = {}
    for row in rows:
        record = (
            JobRecord.objects.filter(
                queue=row.queue, job_id__startswith=f"repeat:{row.id}:", processed_at__isnull=False
            )
            .order_by("-created_at", "-pk")
            .first()
        )
        if record is not None:
            found[(row.queue, row.id)] = record
    return found


def scheduler_list(model_admin: ModelAdmin, request: HttpRequest) -> TemplateResponse:
    _require_view(model_admin, request)
    config = mirror.mirror_settings()
    listed: list[_Listed] = []
    redis_error = ""
    try:
        rows = scheduler_rows(live_queue(config.prefix, name) for name in _queue_names())
    except redis.RedisError as error:
        rows, redis_error = [], str(error)
    last = _last_jobs(rows)
    for row in rows:
        actions = [
            (action, label, _url("scheduler_action", row.queue, action, query={"id": row.id}))
            for action, (codename, label, _) in SCHEDULER_ACTIONS.items()
            if has_action_permission(request, codename)
            and not (action == "pause" and row.scheduler.paused)
            and not (action == "resume" and not row.scheduler.paused)
        ]
        listed.append(_Listed(row, last.get((row.queue, row.id)), actions))
    context = _context(
        model_admin,
        request,
        "Job schedulers",
        schedulers=listed,
        redis_error=redis_error,
        prefix=config.prefix,
    )
    return _render(model_admin, request, "schedulers.html", context)


def scheduler_action(
    model_admin: ModelAdmin, request: HttpRequest, queue: str, action: str
) -> HttpResponse:
    if action not in SCHEDULER_ACTIONS:
        raise Http404(f"unknown action {action!r}")
    codename, label, effect = SCHEDULER_ACTIONS[action]
    _require_view(model_admin, request)  # an action permission alone grants nothing
    if not has_action_permission(request, codename):
        from django.core.exceptions import PermissionDenied

        raise PermissionDenied
    scheduler_id = request.GET.get("id") or request.POST.get("id") or ""
    config = mirror.mirror_settings()
    try:
        engine_queue = live_queue(config.prefix, queue)
        # the scheduler's hash proves the queue real (no action on made-up names)
        exists = engine_queue.get_job_scheduler(scheduler_id) is not None
    except FlowJobsError:  # a name Redis keys cannot hold
        exists = False
    if not exists:
        raise Http404("no such job scheduler")
    back = _url("schedulers")
    if request.method == "POST":
        try:
            done = _perform(engine_queue, action, scheduler_id)
        except (FlowJobsError, redis.RedisError) as error:
            model_admin.message_user(request, f"{label} failed: {error}", messages.ERROR)
        else:
            model_admin.message_user(request, done, messages.SUCCESS)
        return HttpResponseRedirect(back)
    context = _context(
        model_admin,
        request,
        f"{label} job scheduler {scheduler_id}: are you sure?",
        action=action,
        action_label=f"{label} job scheduler {scheduler_id} of queue {queue}",
        queue_name=queue,
        effect=effect,
        records=[],
        cancel_url=back,
        form_url=request.get_full_path(),
    )
    return _render(model_admin, request, "confirm_action.html", context)


def _perform(queue: Queue, action: str, scheduler_id: str) -> str:
    where = f"job scheduler {scheduler_id} of queue {queue.name}"
    if action == "pause":
        queue.pause_job_scheduler(scheduler_id)
        return f"{where} paused"
    if action == "resume":
        queue.resume_job_scheduler(scheduler_id)
        return f"{where} resumed"
    if action == "run":
        job = queue.run_job_scheduler_now(scheduler_id)
        return f"{where}: job {job.id} added to run now"
    queue.remove_job_scheduler(scheduler_id)
    return f"{where} removed"
