"""Admin pages beyond the changelist: job detail, flow tree, queue dashboard, actions.

Lists come from the mirror; detail is read live from Redis through the engine when
the job still exists. Actions call the engine and never edit rows: the projector
brings the rows up to date from the events the engine emits.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

import redis
from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.db.models import Case, Count, IntegerField, Value, When
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import reverse

from . import admin_children, conf, mirror, registry
from .admin_display import allowed_attempts, attempts_text, fold_trace, readable_options
from .engine import FlowJobsError, ForeignKeyValue, Job, Queue, cancellation
from .engine.options import now_ms
from .models import JobRecord, JobState, StreamPosition

if TYPE_CHECKING:
    from django.contrib.admin import ModelAdmin

CHILDREN_PAGE_SIZE = 100
_EAGER_DEPTH = 1  # levels below the shown root whose children are rendered up front
_EAGER_NODES = 40  # at most this many nodes get their children rendered up front
_LOG_LINES = 500

# action name -> (permission codename, label, states it applies to)
JOB_ACTIONS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "retry": ("retry_job", "Retry", (JobState.FAILED,)),
    "remove": ("remove_job", "Remove (with its children)", ()),
    "promote": ("promote_job", "Promote (run now)", (JobState.DELAYED,)),
    "cancel": ("cancel_job", "Cancel (stop the running job)", (JobState.ACTIVE,)),
}
QUEUE_ACTIONS: dict[str, str] = {"pause": "Pause", "resume": "Resume"}


# --------------------------------------------------------------------------- helpers


def has_action_permission(request: HttpRequest, codename: str) -> bool:
    """An action needs its own permission and the view permission: one alone grants nothing."""
    user = request.user
    return (
        user.is_active
        and user.has_perm("flowjobs.view_jobrecord")
        and user.has_perm(f"flowjobs.{codename}")
    )


def _require_view(model_admin: ModelAdmin, request: HttpRequest) -> None:
    if not model_admin.has_view_permission(request):
        raise PermissionDenied


def _require_action(request: HttpRequest, codename: str) -> None:
    if not has_action_permission(request, codename):
        raise PermissionDenied


def live_queue(prefix: str, name: str) -> Queue:
    """An engine Queue on the configured Redis for a mirrored queue (shared client)."""
    return Queue(name, connection=mirror.redis_client(), prefix=prefix)


def _url(name: str, *args: Any, query: dict[str, Any] | None = None) -> str:
    url = reverse(f"admin:flowjobs_jobrecord_{name}", args=args)
    return f"{url}?{urlencode(query)}" if query else url


def detail_url(record: JobRecord) -> str:
    return _url("detail", record.pk)


def changelist_url(**filters: Any) -> str:
    return _url("changelist", query=filters or None)


def pretty_json(value: Any) -> str:
    if isinstance(value, str):
        return value
    try:
        return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True)
    except (TypeError, ValueError):
        return repr(value)


def format_duration(ms: int | None) -> str:
    if ms is None:
        return ""
    if ms < 1000:
        return f"{ms} ms"
    seconds = ms / 1000
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, seconds = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {seconds} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"


def progress_percent(value: Any) -> int | None:
    """A 0..100 bar value for numeric progress; None when progress is not a number."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return max(0, min(100, int(value)))


def _context(model_admin: ModelAdmin, request: HttpRequest, title: str, **extra: Any) -> dict:
    return {
        **model_admin.admin_site.each_context(request),
        "opts": model_admin.model._meta,
        "title": title,
        "changelist_url": changelist_url(),
        "dashboard_url": _url("dashboard"),
        **extra,
    }


def _render(
    model_admin: ModelAdmin, request: HttpRequest, template: str, context: dict
) -> TemplateResponse:
    request.current_app = model_admin.admin_site.name
    return TemplateResponse(request, f"flowjobs/admin/{template}", context)


# --------------------------------------------------------------------------- job detail


@dataclass
class _Child:
    key: str
    record: JobRecord | None
    value: Any = None
    outcome: str = ""

    @property
    def label(self) -> str:
        if self.record:
            return f"{self.record.queue} / {self.record.job_id}"
        return self.key


def job_detail(model_admin: ModelAdmin, request: HttpRequest, pk: int) -> TemplateResponse:
    _require_view(model_admin, request)
    context = detail_context(model_admin, request, get_object_or_404(JobRecord, pk=pk))
    return _render(model_admin, request, "job_detail.html", context)


def detail_context(model_admin: ModelAdmin, request: HttpRequest, record: JobRecord) -> dict:
    """What the job's page shows (its live part is re-rendered from this too)."""
    job: Job | None = None
    redis_error = ""
    logs: list[str] = []
    logs_total = 0
    state = record.state
    children: list[_Child] = []
    why_waiting: admin_children.WaitReason | None = None
    try:
        queue = live_queue(record.prefix, record.queue)
        job = queue.get_job(record.job_id)
        if job is not None:
            state = job.get_state()
            logs, logs_total = queue.get_job_logs(record.job_id, 0, _LOG_LINES - 1)
            children, why_waiting = _live_children(job)
    except (redis.RedisError, FlowJobsError) as error:
        redis_error = str(error)
        job = None
    if job is None:
        children = _mirrored_children(record)
        if state == JobState.WAITING_CHILDREN:
            why_waiting = admin_children.mirrored_wait_reason(record)
    if state != JobState.WAITING_CHILDREN:
        why_waiting = None
    elif why_waiting is not None:
        why_waiting.set_aside_blocked(record.root_key or record.key)

    if job is not None:
        data = job.data
        opts = job.opts if not job.opts_error else job.raw.get("opts", "")
        fields = {
            "name": job.name,
            "data": pretty_json(data),
            "opts": pretty_json(readable_options(opts)),
            "returnvalue": pretty_json(job.returnvalue) if "returnvalue" in job.raw else "",
            "failed_reason": job.failed_reason or "",
            "stacktrace": job.stacktrace,
            "progress": job.progress,
            "attempts_made": job.attempts_made,
            "attempts_started": job.attempts_started,
            "attempts": job.attempts,
            "stalled_counter": job.stalled_counter,
            "created": mirror._to_datetime(job.timestamp),
            "processed": mirror._to_datetime(job.processed_on),
            "finished": mirror._to_datetime(job.finished_on),
            "delay": job.delay,
            "priority": job.priority,
            "processed_by": job.processed_by or "",
            "duration": format_duration(
                job.finished_on - job.processed_on if job.finished_on and job.processed_on else None
            ),
        }
    else:
        fields = {
            "name": record.name,
            "data": pretty_json(record.data),
            "opts": pretty_json(readable_options(record.opts)),
            "returnvalue": pretty_json(record.returnvalue)
            if record.returnvalue is not None
            else "",
            "failed_reason": record.failed_reason,
            "stacktrace": record.stacktrace if isinstance(record.stacktrace, list) else [],
            "progress": record.progress,
            "attempts_made": record.attempts_made,
            "attempts_started": record.attempts_started,
            "attempts": allowed_attempts(record.opts),
            "stalled_counter": record.stalled_counter,
            "created": record.created_at,
            "processed": record.processed_at,
            "finished": record.finished_at,
            "delay": record.delay,
            "priority": record.priority,
            "processed_by": record.processed_by,
            "duration": format_duration(record.duration_ms),
        }
    # traces with the user's frames first
    fields["traces"] = [fold_trace(trace) for trace in fields["stacktrace"] or []]
    # attemptsMade counts finished attempts: a running job is on the next one
    fields["attempt_running"] = attempts_text(
        JobState.ACTIVE, fields["attempts_made"], fields["attempts"], of=" of "
    )
    fields["progress_percent"] = progress_percent(fields["progress"])
    fields["progress_text"] = (
        "" if fields["progress"] in (None, 0) else pretty_json(fields["progress"])
    )
    parent = JobRecord.objects.filter(key=record.parent_key).first() if record.parent_key else None
    root = (
        JobRecord.objects.filter(key=record.root_key).first()
        if record.root_key and record.root_key != record.key
        else None
    )
    actions = [
        {"name": name, "label": label, "url": _url("job_action", record.pk, name)}
        for name, (codename, label, states) in JOB_ACTIONS.items()
        if job is not None
        and has_action_permission(request, codename)
        and (not states or state in states)
    ]
    context = _context(
        model_admin,
        request,
        f"Job {record.queue} / {record.job_id}",
        record=record,
        live=job is not None,
        redis_error=redis_error,
        state=state,
        fields=fields,
        logs=logs,
        logs_total=logs_total,
        logs_truncated=logs_total > len(logs),
        children=children,
        parent=parent,
        root=root,
        tree_url=_url("tree", record.pk),
        actions=actions,
        invalid_json=record.invalid_json,
        why_waiting=why_waiting,
        live_url=_url("live_detail", record.pk),
    )
    return context


def _records_by_key(keys: list[str]) -> dict[str, JobRecord]:
    found: dict[str, JobRecord] = {}
    for start in range(0, len(keys), 500):
        for row in JobRecord.objects.filter(key__in=keys[start : start + 500]):
            found[row.key] = row
    return found


def _live_children(job: Job) -> tuple[list[_Child], admin_children.WaitReason]:
    """The children from the parent's dependency keys, and why the parent waits.

    A child that failed without a failure policy stays among the unprocessed
    dependencies (BullMQ's rule), so each unprocessed one is checked against its
    queue's failed set: "pending" only for those really still to run."""
    dependencies = job.get_dependencies()
    unprocessed = dependencies["unprocessed"]
    failed_unprocessed = admin_children.failed_in_redis(job.queue.client, unprocessed)
    ignored = dict(sorted(dependencies["ignored"].items())[:CHILDREN_PAGE_SIZE])
    # ignore_dependency_on_failure and continue_parent_on_failure both land here
    policies = {key: row.opts for key, row in _records_by_key(list(ignored)).items()}
    listed: list[tuple[str, Any, str]] = []
    for key, value in sorted(dependencies["processed"].items()):
        listed.append((key, pretty_json(value), "completed"))
    for key, reason in ignored.items():
        listed.append((key, reason, f"failed ({admin_children.failure_mark(policies.get(key))})"))
    for key in dependencies["failed"]:
        listed.append((key, "", "failed (failed its parent)"))
    for key in unprocessed:
        if key in failed_unprocessed:
            listed.append((key, "", "failed (no failure policy: the parent waits for it)"))
        else:
            listed.append((key, "", "pending"))
    # what needs a look first: failures, then pending, then completed
    listed.sort(key=lambda item: (not item[2].startswith("failed"), item[2] != "pending"))
    listed = listed[:CHILDREN_PAGE_SIZE]
    records = _records_by_key([key for key, _, _ in listed] + unprocessed[:CHILDREN_PAGE_SIZE])
    children = [_Child(key, records.get(key), value, outcome) for key, value, outcome in listed]
    reason = admin_children.wait_reason(
        unprocessed[:CHILDREN_PAGE_SIZE], failed_unprocessed, records
    )
    return children, reason


def _mirrored_children(record: JobRecord) -> list[_Child]:
    rows = JobRecord.objects.filter(parent_key=record.key).order_by("created_at", "pk")[
        :CHILDREN_PAGE_SIZE
    ]
    return [
        _Child(
            row.key,
            row,
            pretty_json(row.returnvalue) if row.returnvalue is not None else "",
            row.state,
        )
        for row in rows
    ]


# --------------------------------------------------------------------------- flow tree


@dataclass
class TreeNode:
    record: JobRecord
    depth: int
    children: list[TreeNode] | None = None  # None: not rendered (loaded on demand)
    remaining: int = 0
    more_url: str = ""
    children_url: str = ""
    subtree_url: str = ""
    detail_url: str = ""
    child_states: list[tuple[str, int]] = field(default_factory=list)
    # failed children by what their failure did to this parent (see admin_children)
    failure_marks: dict[str, int] = field(default_factory=dict)
    # waits forever because a job further down failed with no failure policy
    blocked_below: bool = False
    focused: bool = False
    open: bool = False
    extra_child: bool = False  # shown beyond the current page because it is selected

    @property
    def failed_children(self) -> int:
        """Failures the parent feels (an ignored or removed failure is not one)."""
        return sum(
            total
            for mark, total in self.failure_marks.items()
            if admin_children.counts_as_failure(mark)
        )

    @property
    def let_go_failures(self) -> list[tuple[str, int]]:
        """Failed children a policy let go of: (mark, how many)."""
        return [
            (mark, total)
            for mark, total in sorted(self.failure_marks.items())
            if not admin_children.counts_as_failure(mark)
        ]

    @property
    def stuck_children(self) -> int:
        """Failed children with no failure policy: a waiting parent waits for them forever."""
        if self.record.state != JobState.WAITING_CHILDREN:
            return 0
        return self.failure_marks.get(admin_children.NO_POLICY, 0)

    @property
    def pending_children(self) -> int:
        done = (JobState.COMPLETED, JobState.FAILED)
        return sum(total for state, total in self.child_states if state not in done)

    @property
    def failure_mark(self) -> str:
        """For a failed child: what its failure did to its parent ("" when not a child)."""
        if self.record.state != JobState.FAILED or not self.record.parent_key:
            return ""
        return admin_children.failure_mark(self.record.opts)

    @property
    def duration(self) -> str:
        return format_duration(self.record.duration_ms)

    @property
    def progress_percent(self) -> int | None:
        return progress_percent(self.record.progress)

    @property
    def attempts(self) -> str:
        allowed = allowed_attempts(self.record.opts)
        return attempts_text(self.record.state, self.record.attempts_made, allowed)

    @property
    def value_text(self) -> str:
        """The return value, shown on demand under the node (cut for huge values)."""
        if self.record.state != JobState.COMPLETED or self.record.returnvalue is None:
            return ""
        text = pretty_json(self.record.returnvalue)
        return text if len(text) <= 2000 else text[:2000] + "\n…"


def _children_queryset(record: JobRecord):
    # Failed children first: in a flow of thousands, those are what one looks for.
    return (
        JobRecord.objects.filter(parent_key=record.key)
        .annotate(
            failed_first=Case(
                When(state=JobState.FAILED, then=Value(0)),
                default=Value(1),
                output_field=IntegerField(),
            )
        )
        .order_by("failed_first", "created_at", "pk")
    )


def _node(record: JobRecord, depth: int) -> TreeNode:
    return TreeNode(
        record=record,
        depth=depth,
        children_url=_url("children", record.pk),
        subtree_url=_url("tree", record.pk, query={"node": record.pk}),
        detail_url=detail_url(record),
    )


def _load_children(node: TreeNode, page: int, must_include: JobRecord | None = None) -> None:
    total = node.record.children_count
    start = (page - 1) * CHILDREN_PAGE_SIZE
    rows = list(_children_queryset(node.record)[start : start + CHILDREN_PAGE_SIZE])
    node.children = [_node(row, node.depth + 1) for row in rows]
    if must_include is not None and all(row.pk != must_include.pk for row in rows):
        extra = _node(must_include, node.depth + 1)
        extra.extra_child = True
        node.children.append(extra)
    shown = start + len(rows)
    node.remaining = max(0, total - shown)
    if node.remaining:
        node.more_url = _url("children", node.record.pk, query={"page": page + 1})


def _attach_child_states(nodes: list[TreeNode]) -> None:
    parents = {node.record.key: node for node in nodes if node.record.children_count}
    if not parents:
        return
    counts: dict[str, list[tuple[str, int]]] = {}
    keys = list(parents)
    for start in range(0, len(keys), 500):
        rows = (
            JobRecord.objects.filter(parent_key__in=keys[start : start + 500])
            .values_list("parent_key", "state")
            .annotate(total=Count("pk"))
            .order_by()
        )
        for parent_key, state, total in rows:
            counts.setdefault(parent_key, []).append((state, total))
    marks = admin_children.failed_children_marks(
        [key for key in keys if any(s == JobState.FAILED for s, _ in counts.get(key, []))]
    )
    for key, node in parents.items():
        node.child_states = sorted(counts.get(key, []))
        node.failure_marks = dict(marks.get(key, {}))
    waiting = [node for node in parents.values() if node.record.state == JobState.WAITING_CHILDREN]
    if waiting:
        blocked = admin_children.blocked_for_good(
            {node.record.root_key or node.record.key for node in waiting}
        )
        for node in waiting:
            node.blocked_below = node.record.key in blocked and not node.stuck_children


def _ancestors(record: JobRecord, limit: int = 64) -> list[JobRecord]:
    """The record's ancestors in the mirror, root first."""
    chain: list[JobRecord] = []
    current = record
    seen = {record.key}
    for _ in range(limit):
        if not current.parent_key or current.parent_key in seen:
            break
        parent = JobRecord.objects.filter(key=current.parent_key).first()
        if parent is None:
            break
        chain.append(parent)
        seen.add(parent.key)
        current = parent
    chain.reverse()
    return chain


def build_tree(top: JobRecord, focus: JobRecord | None) -> tuple[TreeNode, int]:
    """The tree under ``top`` with the path to ``focus`` open; returns (root node, rendered)."""
    # ancestor key -> the next job on the way down to ``focus``
    focus_path: dict[str, JobRecord] = {}
    if focus is not None:
        chain = [*_ancestors(focus), focus]
        for parent, child in zip(chain, chain[1:], strict=False):
            focus_path[parent.key] = child
    root = _node(top, 0)
    root.open = True
    root.focused = focus is not None and focus.pk == top.pk
    level = [root]
    rendered = 1
    expanded = 0
    all_nodes = [root]
    while level:
        next_level: list[TreeNode] = []
        for node in level:
            on_path = node.record.key in focus_path
            eager = node.depth < _EAGER_DEPTH and expanded < _EAGER_NODES
            if not node.record.children_count or not (eager or on_path):
                continue
            _load_children(node, 1, focus_path.get(node.record.key))
            expanded += 1
            for child in node.children or []:
                child.focused = focus is not None and child.record.pk == focus.pk
                child.open = child.record.key in focus_path
                rendered += 1
                all_nodes.append(child)
                next_level.append(child)
        level = next_level
    _attach_child_states(all_nodes)
    return root, rendered


def flow_tree(model_admin: ModelAdmin, request: HttpRequest, pk: int) -> TemplateResponse:
    _require_view(model_admin, request)
    record = get_object_or_404(JobRecord, pk=pk)
    node_pk = request.GET.get("node")
    if node_pk:
        try:
            top = JobRecord.objects.get(pk=int(node_pk))
        except (ValueError, JobRecord.DoesNotExist):
            raise Http404("no such job in the mirror") from None
    else:
        ancestors = _ancestors(record)
        top = ancestors[0] if ancestors else record
    root, rendered = build_tree(top, record)
    above = _ancestors(top)
    context = _context(
        model_admin,
        request,
        f"Flow of {top.queue} / {top.job_id}",
        record=record,
        root=root,
        rendered=rendered,
        above=[(row, _url("tree", row.pk)) for row in above],
        tree_changelist_url=changelist_url(root_key=top.root_key or top.key),
        page_size=CHILDREN_PAGE_SIZE,
        live_url=_url("live_tree", record.pk, query={"node": top.pk}),
        **tree_overview(top),
    )
    return _render(model_admin, request, "flow_tree.html", context)


def tree_overview(top: JobRecord) -> dict[str, Any]:
    """The flow's state counts and timeline (the tree page's live parts besides nodes)."""
    from .admin_timeline import build_timeline

    tree_states = list(
        JobRecord.objects.filter(root_key=top.root_key or top.key)
        .values_list("state")
        .annotate(total=Count("pk"))
        .order_by("state")
    )
    return {
        "top": top,
        "tree_states": tree_states,
        "tree_total": sum(total for _, total in tree_states),
        "timeline": build_timeline(top),
    }


def tree_children(model_admin: ModelAdmin, request: HttpRequest, pk: int) -> HttpResponse:
    """One page of a node's children: an HTML fragment (for the tree's script) or a page."""
    _require_view(model_admin, request)
    record = get_object_or_404(JobRecord, pk=pk)
    try:
        page = int(request.GET.get("page", "1"))
    except ValueError:
        page = 1
    last_page = max(1, -(-record.children_count // CHILDREN_PAGE_SIZE))
    page = min(max(1, page), last_page)  # past the end: the last page, never an OFFSET overflow
    node = _node(record, 0)
    _load_children(node, page)
    _attach_child_states(node.children or [])
    context = _context(
        model_admin,
        request,
        f"Children of {record.queue} / {record.job_id}",
        record=record,
        node=node,
        page=page,
        tree_url=_url("tree", record.pk),
    )
    if request.GET.get("fragment"):
        request.current_app = model_admin.admin_site.name
        return TemplateResponse(request, "flowjobs/admin/tree_children.html", context)
    return _render(model_admin, request, "tree_children_page.html", context)


# --------------------------------------------------------------------------- dashboard


@dataclass
class QueueRow:
    prefix: str
    name: str
    counts: dict[str, int]
    paused: bool
    workers: list[str]
    lag: int | None
    lag_ms: int | None  # age of the oldest event the mirror has not applied
    cells: list[tuple[str, int, str]]  # (state, live count, changelist link)
    total_url: str
    mirrored: int
    pause_url: str
    problem: str = ""  # why the queue's keys could not be read (another client's value)

    @property
    def lag_age(self) -> str:
        return format_duration(self.lag_ms) if self.lag_ms else ""


_DASHBOARD_STATES = (
    "waiting",
    "prioritized",
    "delayed",
    "waiting-children",
    "active",
    "completed",
    "failed",
)


def dashboard(model_admin: ModelAdmin, request: HttpRequest) -> TemplateResponse:
    _require_view(model_admin, request)
    return _render(model_admin, request, "dashboard.html", dashboard_context(model_admin, request))


def dashboard_context(model_admin: ModelAdmin, request: HttpRequest) -> dict:
    """What the dashboard shows (its live part is re-rendered from this too)."""
    from .admin_charts import mirror_lag_age, queue_chart

    config = mirror.mirror_settings()
    charts = []
    now = now_ms()
    rows: list[QueueRow] = []
    redis_error = ""
    lock_holder = None
    mirrored = dict(
        JobRecord.objects.filter(prefix=config.prefix)
        .values_list("queue")
        .annotate(total=Count("pk"))
        .order_by()
    )
    positions = {
        position.queue: position for position in StreamPosition.objects.filter(prefix=config.prefix)
    }
    try:
        client = mirror.redis_client(config.redis_url)
        names = sorted(
            set(discovered_queues(client, config.redis_url, config.prefix)) | set(mirrored)
        )
        clients = client.client_list()
        lock_holder = client.get(config.lock_key)
        for name in names:
            queue = live_queue(config.prefix, name)
            try:
                counts = queue.get_job_counts(*_DASHBOARD_STATES)
                paused = queue.is_paused()
            except ForeignKeyValue as error:  # that queue's row says so; the others are read
                counts, paused, problem = {}, False, str(error)
            else:
                problem = ""
            rows.append(
                QueueRow(
                    prefix=config.prefix,
                    name=name,
                    counts=counts,
                    paused=paused,
                    workers=_worker_names(config.prefix, name, clients),
                    lag=_mirror_lag(client, config.prefix, name, positions.get(name)),
                    lag_ms=mirror_lag_age(
                        client,
                        queue.keys.events,
                        positions[name].last_id if name in positions else None,
                        now,
                    ),
                    cells=[
                        (
                            state,
                            counts.get(state, 0),
                            changelist_url(queue__exact=name, state__exact=state),
                        )
                        for state in _DASHBOARD_STATES
                    ],
                    total_url=changelist_url(queue__exact=name),
                    mirrored=mirrored.get(name, 0),
                    pause_url=_url(
                        "queue_action",
                        config.prefix,
                        name,
                        "resume" if paused else "pause",
                    ),
                    problem=problem,
                )
            )
            if not problem:
                charts.append(queue_chart(queue, now))
    except redis.RedisError as error:
        redis_error = str(error)
    can_pause = has_action_permission(request, "pause_queue")
    context = _context(
        model_admin,
        request,
        "Job queues",
        queues=rows,
        states=_DASHBOARD_STATES,
        redis_error=redis_error,
        prefix=config.prefix,
        lock_holder=lock_holder,
        can_pause=can_pause,
        charts=charts,
        charts_recorded=any(chart.recorded for chart in charts),
        live_url=_url("live_dashboard"),
        outbox=outbox_backlog(),
    )
    return context


# queue discovery SCANs the whole keyspace: done at most this often per prefix (more
# seldom over a big keyspace, see mirror.discover_queues_paced), since the dashboard polls
# every few seconds (a new queue shows up within this delay)
DISCOVERY_TTL_S = 30.0
# (redis url, prefix) -> (monotonic time the names go stale, the names)
_discovered: dict[tuple[str, str], tuple[float, list[str]]] = {}


def discovered_queues(client: redis.Redis, redis_url: str, prefix: str) -> list[str]:
    """The queues under ``prefix`` in Redis (``mirror.discover_queues``), remembered a while."""
    where = (redis_url, prefix)
    found = _discovered.get(where)
    if found is None or time.monotonic() >= found[0]:
        names, due = mirror.discover_queues_paced(client, prefix, DISCOVERY_TTL_S)
        found = _discovered[where] = (due, names)
    return found[1]


def outbox_backlog() -> list[dict[str, Any]]:
    """Per watched database: outbox entries waiting for Redis, the oldest one's age, and
    the last error of the oldest entry Redis has refused so far (issue 15)."""
    from . import conf, outbox
    from .models import OutboxEntry

    found = []
    for alias in outbox.outbox_settings().databases:
        count, age = outbox.backlog(alias)
        failing = (
            OutboxEntry.objects.using(alias)
            .filter(prefix=conf.settings().PREFIX)
            .exclude(last_error="")
            .order_by("id")
            .values_list("last_error", flat=True)
            .first()
        )
        found.append(
            {
                "database": alias,
                "entries": count,
                "oldest": format_duration(int(age * 1000)) if age is not None else "",
                "last_error": failing or "",
            }
        )
    return found


def _worker_names(prefix: str, queue: str, clients: list[dict[str, Any]]) -> list[str]:
    """Connection names of the queue's workers (Node's base64 form and the plain form)."""
    import base64

    bases = {f"{prefix}:{base64.b64encode(queue.encode()).decode()}", f"{prefix}:{queue}"}
    names = []
    for entry in clients:
        name = entry.get("name") or ""
        if name in bases or any(name.startswith(f"{base}:w:") for base in bases):
            names.append(name.split(":w:", 1)[1] if ":w:" in name else "(unnamed)")
    return sorted(names)


def _mirror_lag(
    client: redis.Redis, prefix: str, queue: str, position: StreamPosition | None
) -> int | None:
    """Events in the stream the mirror has not applied yet (None when unknown)."""
    try:
        info = client.xinfo_stream(f"{prefix}:{queue}:events")
    except redis.ResponseError:
        return 0
    added = info.get("entries-added")
    if position is None:
        return int(added) if added is not None else int(info.get("length") or 0)
    if added is None or position.entries_read is None:
        return None
    return max(0, int(added) - position.entries_read)


# --------------------------------------------------------------------------- actions


def perform_job_action(action: str, record: JobRecord) -> str:
    """Run ``action`` on the live job through the engine; returns a message."""
    queue = live_queue(record.prefix, record.queue)
    job = queue.get_job(record.job_id)
    if job is None:
        raise FlowJobsError(f'job "{record.job_id}" in queue "{record.queue}" is not in Redis')
    if action == "retry":
        job.retry("failed")
        return f"{record.queue} / {record.job_id} queued again"
    if action == "remove":
        job.remove(remove_children=True)
        return f"{record.queue} / {record.job_id} removed (with its children)"
    if action == "promote":
        job.promote()
        return f"{record.queue} / {record.job_id} promoted"
    if action == "cancel":
        how = queue.cancel_and_confirm(record.job_id, "cancelled from the admin")
        if how == cancellation.NOT_RUNNING:
            raise FlowJobsError(f'job "{record.job_id}" in queue "{record.queue}" is not running')
        return f"{record.queue} / {record.job_id}: {cancellation.describe(how)}"
    raise Http404(f"unknown action {action!r}")


def job_action(model_admin: ModelAdmin, request: HttpRequest, pk: int, action: str) -> HttpResponse:
    if action not in JOB_ACTIONS:
        raise Http404(f"unknown action {action!r}")
    codename, label, _states = JOB_ACTIONS[action]
    _require_action(request, codename)
    record = get_object_or_404(JobRecord, pk=pk)
    if request.method == "POST":
        try:
            message = perform_job_action(action, record)
        except (FlowJobsError, redis.RedisError) as error:
            model_admin.message_user(request, f"{label} failed: {error}", messages.ERROR)
        else:
            model_admin.message_user(request, message, messages.SUCCESS)
        target = changelist_url() if action == "remove" else detail_url(record)
        return HttpResponseRedirect(target)
    context = _context(
        model_admin,
        request,
        f"{label}: are you sure?",
        action=action,
        action_label=label,
        records=[record],
        cancel_url=detail_url(record),
        form_url=request.path,
    )
    return _render(model_admin, request, "confirm_action.html", context)


def _require_known_queue(prefix: str, queue: str) -> None:
    """404 unless ``queue`` is one the project knows, under the configured prefix: named
    in QUEUES or by a registered processor, or found in Redis (its meta hash or events
    stream). The URL's prefix is never trusted: acting on it would write stray keys."""
    config = mirror.mirror_settings()
    if prefix != config.prefix or not queue or ":" in queue:
        raise Http404("no such queue")
    if queue in set(conf.settings().QUEUES) | set(registry.queue_names()):
        return
    try:
        found = mirror.redis_client(config.redis_url).exists(
            f"{prefix}:{queue}:meta", f"{prefix}:{queue}:events"
        )
    except redis.RedisError:
        return  # the action itself reports that Redis cannot be reached
    if not found:
        raise Http404("no such queue")


def queue_action(
    model_admin: ModelAdmin, request: HttpRequest, prefix: str, queue: str, action: str
) -> HttpResponse:
    if action not in QUEUE_ACTIONS:
        raise Http404(f"unknown action {action!r}")
    _require_action(request, "pause_queue")
    _require_known_queue(prefix, queue)
    label = QUEUE_ACTIONS[action]
    if request.method == "POST":
        try:
            engine_queue = live_queue(prefix, queue)
            engine_queue.pause() if action == "pause" else engine_queue.resume()
        except (FlowJobsError, redis.RedisError) as error:
            model_admin.message_user(request, f"{label} failed: {error}", messages.ERROR)
        else:
            done = "paused" if action == "pause" else "resumed"
            model_admin.message_user(request, f"queue {queue} {done}", messages.SUCCESS)
        return HttpResponseRedirect(_url("dashboard"))
    context = _context(
        model_admin,
        request,
        f"{label} queue {queue}: are you sure?",
        action=action,
        action_label=f"{label} queue {queue}",
        queue_name=queue,
        records=[],
        cancel_url=_url("dashboard"),
        form_url=request.path,
    )
    return _render(model_admin, request, "confirm_action.html", context)
