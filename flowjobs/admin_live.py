"""Live updates for the tree, the job page and the dashboard: small JSON answers the
pages poll (static/flowjobs/live.js). Each holds server-rendered, escaped HTML for the
page's regions by element id, so the markup has one source, the templates.

``next_ms`` tells the page when to ask again: soon while something moves, rarely once
everything shown has finished.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django.http import Http404, HttpRequest, JsonResponse
from django.shortcuts import get_object_or_404
from django.template.loader import render_to_string

from .admin_views import (
    _attach_child_states,
    _node,
    _require_view,
    changelist_url,
    dashboard_context,
    detail_context,
    tree_overview,
)
from .models import JobRecord, JobState

if TYPE_CHECKING:
    from django.contrib.admin import ModelAdmin

MOVING_MS = 2000
SETTLED_MS = 15000
DASHBOARD_MS = 3000
MAX_NODES = 500  # tree lines refreshed per poll (the ones on screen come first)

_SETTLED = (JobState.COMPLETED, JobState.FAILED)


def _template(name: str) -> str:
    return f"flowjobs/admin/{name}"


def _answer(regions: dict[str, str], next_ms: int, **extra: Any) -> JsonResponse:
    response = JsonResponse({"regions": regions, "next_ms": next_ms, **extra})
    response["Cache-Control"] = "no-store"
    return response


def _job_pks(request: HttpRequest) -> list[int]:
    pks = []
    for part in request.GET.get("jobs", "").split(",")[:MAX_NODES]:
        if part.strip().isdigit():
            pks.append(int(part))
    return pks


def live_tree(model_admin: ModelAdmin, request: HttpRequest, pk: int) -> JsonResponse:
    _require_view(model_admin, request)
    record = get_object_or_404(JobRecord, pk=pk)
    top = record
    if request.GET.get("node", "").isdigit():
        top = JobRecord.objects.filter(pk=int(request.GET["node"])).first()
        if top is None:
            raise Http404("no such job in the mirror")
    nodes = [_node(row, 0) for row in JobRecord.objects.filter(pk__in=_job_pks(request))]
    _attach_child_states(nodes)
    regions = {
        f"fj-line-{node.record.pk}": render_to_string(
            _template("tree_line_body.html"), {"node": node}, request
        )
        for node in nodes
    }
    overview = tree_overview(top)
    context = {
        **overview,
        "record": record,
        "tree_changelist_url": changelist_url(root_key=top.root_key or top.key),
    }
    regions["fj-tree-summary"] = render_to_string(
        _template("flow_tree_summary.html"), context, request
    )
    regions["fj-timeline"] = render_to_string(_template("flow_timeline.html"), context, request)
    settled = all(state in _SETTLED for state, _ in overview["tree_states"])
    return _answer(
        regions,
        SETTLED_MS if settled else MOVING_MS,
        states={node.record.pk: node.record.state for node in nodes},
    )


def live_detail(model_admin: ModelAdmin, request: HttpRequest, pk: int) -> JsonResponse:
    _require_view(model_admin, request)
    context = detail_context(model_admin, request, get_object_or_404(JobRecord, pk=pk))
    html = render_to_string(_template("job_detail_body.html"), context, request)
    settled = context["state"] in _SETTLED or not context["live"]
    return _answer(
        {"fj-detail-live": html}, SETTLED_MS if settled else MOVING_MS, state=context["state"]
    )


def live_dashboard(model_admin: ModelAdmin, request: HttpRequest) -> JsonResponse:
    _require_view(model_admin, request)
    context = dashboard_context(model_admin, request)
    html = render_to_string(_template("dashboard_body.html"), context, request)
    return _answer({"fj-dashboard-live": html}, DASHBOARD_MS)
