"""Django admin for the mirrored jobs: changelist, flow tree, job detail, dashboard.

Rows are read-only. Retry, remove, promote and pause/resume go through the engine,
each behind its own permission (``flowjobs.retry_job``, ``remove_job``,
``promote_job``, ``pause_queue``) and a confirmation page.
"""

from __future__ import annotations

from typing import Any

import redis
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path
from django.utils import timezone
from django.utils.html import format_html

from . import admin_live, admin_schedulers, admin_views
from .admin_display import allowed_attempts, attempts_text
from .engine import FlowJobsError
from .models import JobRecord, JobState, UnstorableJob


def state_badge(state: str) -> str:
    css = state.replace("-", "") if state in JobState.values else "unknown"
    return format_html('<span class="fj-badge fj-state-{}">{}</span>', css, state)


def progress_bar(value: Any) -> str:
    percent = admin_views.progress_percent(value)
    if percent is None:
        if value in (None, 0, "", {}):
            return ""
        return format_html('<span class="fj-progress-text">{}</span>', str(value)[:40])
    return format_html(
        '<span class="fj-progress" title="{}%"><span style="width: {}%"></span></span>',
        percent,
        percent,
    )


class _ReadOnlyAdmin(admin.ModelAdmin):
    """The mirror's rows are written by the projector only: nobody adds, edits or deletes."""

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(JobRecord)
class JobRecordAdmin(_ReadOnlyAdmin):
    list_display = (
        "job_link",
        "queue",
        "name",
        "state_display",
        "progress_display",
        "attempts_display",
        "created_display",
        "duration_display",
        "in_redis",
        "flow_link",
    )
    list_display_links = None
    list_filter = ("queue", "state", "name", "created_at", "in_redis")
    search_fields = ("=job_id", "name")
    list_per_page = 100
    show_full_result_count = False
    change_list_template = "flowjobs/admin/change_list.html"
    actions = ("retry_selected", "remove_selected", "promote_selected")

    class Media:
        css = {"all": ("flowjobs/admin.css",)}

    def has_retry_permission(self, request: HttpRequest) -> bool:
        return admin_views.has_action_permission(request, "retry_job")

    def has_remove_permission(self, request: HttpRequest) -> bool:
        return admin_views.has_action_permission(request, "remove_job")

    def has_promote_permission(self, request: HttpRequest) -> bool:
        return admin_views.has_action_permission(request, "promote_job")

    def lookup_allowed(self, lookup: str, value: str, request: HttpRequest | None = None) -> bool:
        # The tree links to "every job of this flow" and "children of this job".
        if lookup in ("root_key", "parent_key", "root_key__exact", "parent_key__exact"):
            return True
        return super().lookup_allowed(lookup, value, request)

    def change_view(
        self,
        request: HttpRequest,
        object_id: str,
        form_url: str = "",
        extra_context: dict | None = None,
    ) -> HttpResponse:
        if not self.has_view_permission(request):
            from django.core.exceptions import PermissionDenied

            raise PermissionDenied
        try:
            pk = int(object_id)
        except ValueError:
            return HttpResponseRedirect(admin_views.changelist_url())
        return HttpResponseRedirect(admin_views._url("detail", pk))

    # -- columns --------------------------------------------------------------------

    @admin.display(description="job", ordering="job_id")
    def job_link(self, obj: JobRecord) -> str:
        return format_html('<a href="{}">{}</a>', admin_views.detail_url(obj), obj.job_id)

    @admin.display(description="state", ordering="state")
    def state_display(self, obj: JobRecord) -> str:
        return state_badge(obj.state)

    @admin.display(description="progress")
    def progress_display(self, obj: JobRecord) -> str:
        return progress_bar(obj.progress)

    @admin.display(description="attempts", ordering="attempts_made")
    def attempts_display(self, obj: JobRecord) -> str:
        return attempts_text(obj.state, obj.attempts_made, allowed_attempts(obj.opts))

    @admin.display(description="created", ordering="created_at")
    def created_display(self, obj: JobRecord) -> str:
        # compact (the changelist must fit 1280 px); the full time is in the tooltip
        if obj.created_at is None:
            return ""
        local = timezone.localtime(obj.created_at)
        return format_html(
            '<span title="{}">{}</span>',
            local.isoformat(sep=" ", timespec="milliseconds"),
            local.strftime("%Y-%m-%d %H:%M:%S"),
        )

    @admin.display(description="duration")
    def duration_display(self, obj: JobRecord) -> str:
        return admin_views.format_duration(obj.duration_ms)

    @admin.display(description="flow")
    def flow_link(self, obj: JobRecord) -> str:
        if not obj.is_flow:
            return ""
        label = f"tree ({obj.children_count})" if obj.children_count else "tree"
        return format_html('<a href="{}">{}</a>', admin_views._url("tree", obj.pk), label)

    # -- extra pages ----------------------------------------------------------------

    def get_urls(self) -> list:
        wrap = self.admin_site.admin_view

        def bind(view: Any) -> Any:
            def bound(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
                return view(self, request, *args, **kwargs)

            return wrap(bound)

        info = "flowjobs_jobrecord"
        return [
            path("dashboard/", bind(admin_views.dashboard), name=f"{info}_dashboard"),
            path("<int:pk>/detail/", bind(admin_views.job_detail), name=f"{info}_detail"),
            path("<int:pk>/tree/", bind(admin_views.flow_tree), name=f"{info}_tree"),
            path("<int:pk>/children/", bind(admin_views.tree_children), name=f"{info}_children"),
            path(
                "<int:pk>/action/<str:action>/",
                bind(admin_views.job_action),
                name=f"{info}_job_action",
            ),
            path("dashboard/live/", bind(admin_live.live_dashboard), name=f"{info}_live_dashboard"),
            path("<int:pk>/live/tree/", bind(admin_live.live_tree), name=f"{info}_live_tree"),
            path("<int:pk>/live/detail/", bind(admin_live.live_detail), name=f"{info}_live_detail"),
            path("schedulers/", bind(admin_schedulers.scheduler_list), name=f"{info}_schedulers"),
            path(
                "schedulers/<str:queue>/<str:action>/",
                bind(admin_schedulers.scheduler_action),
                name=f"{info}_scheduler_action",
            ),
            path(
                "queue/<str:prefix>/<str:queue>/<str:action>/",
                bind(admin_views.queue_action),
                name=f"{info}_queue_action",
            ),
            *super().get_urls(),
        ]

    # -- bulk actions (changelist) ----------------------------------------------------

    def _bulk(
        self,
        request: HttpRequest,
        queryset: QuerySet[JobRecord],
        action: str,
        applies_to: tuple[str, ...],
    ) -> TemplateResponse | None:
        codename, label, _states = admin_views.JOB_ACTIONS[action]
        records = list(queryset.filter(in_redis=True))
        if applies_to:
            records = [record for record in records if record.state in applies_to]
        if request.POST.get("post") != "yes":
            context = admin_views._context(
                self,
                request,
                f"{label}: are you sure?",
                action=action,
                action_label=label,
                records=records,
                skipped=queryset.count() - len(records),
                bulk_action=f"{action}_selected",
                selected=[record.pk for record in records],
                cancel_url=admin_views.changelist_url(),
                form_url="",
            )
            request.current_app = self.admin_site.name
            return TemplateResponse(request, "flowjobs/admin/confirm_action.html", context)
        done, failures = 0, []
        for record in records:
            try:
                admin_views.perform_job_action(action, record)
                done += 1
            except (FlowJobsError, redis.RedisError) as error:
                failures.append(f"{record.queue}/{record.job_id}: {error}")
        if done:
            self.message_user(request, f"{label}: {done} job(s) done", messages.SUCCESS)
        for failure in failures[:20]:
            self.message_user(request, f"{label} failed for {failure}", messages.ERROR)
        return None

    @admin.action(description="Retry selected failed jobs", permissions=["retry"])
    def retry_selected(
        self, request: HttpRequest, queryset: QuerySet[JobRecord]
    ) -> TemplateResponse | None:
        return self._bulk(request, queryset, "retry", (JobState.FAILED,))

    @admin.action(description="Remove selected jobs (with their children)", permissions=["remove"])
    def remove_selected(
        self, request: HttpRequest, queryset: QuerySet[JobRecord]
    ) -> TemplateResponse | None:
        return self._bulk(request, queryset, "remove", ())

    @admin.action(description="Promote selected delayed jobs", permissions=["promote"])
    def promote_selected(
        self, request: HttpRequest, queryset: QuerySet[JobRecord]
    ) -> TemplateResponse | None:
        return self._bulk(request, queryset, "promote", (JobState.DELAYED,))


@admin.register(UnstorableJob)
class UnstorableJobAdmin(_ReadOnlyAdmin):
    """Jobs and queues the mirror could not store (see flowjobs.mirror.unstorable).

    Read-only, like the rest of the mirror.
    """

    list_display = ("queue", "job_id_display", "reason", "first_seen", "last_seen")
    list_filter = ("queue",)
    search_fields = ("job_id", "queue")
    list_display_links = None

    @admin.display(description="job id", ordering="job_id")
    def job_id_display(self, obj: UnstorableJob) -> str:
        shown = obj.job_id or "(the whole queue)"
        return shown if len(shown) <= 120 else f"{shown[:120]}... ({len(shown)} characters)"
