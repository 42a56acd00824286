"""flowjobs views outside the admin: the Prometheus metrics endpoint.

Include ``flowjobs.urls`` in the project's URLconf (``path("flowjobs/",
include("flowjobs.urls"))``). ``/flowjobs/metrics`` answers a staff user's session,
or a scraper sending ``Authorization: Bearer <FLOWJOBS["METRICS_TOKEN"]>`` (or the
``FLOWJOBS_METRICS_TOKEN`` environment variable); anyone else gets 403.
Queues: those in ``FLOWJOBS["QUEUES"]``, the ones with registered processors, and
``FLOWJOBS["METRICS_QUEUES"]``.
"""

from __future__ import annotations

import hmac
import os
import threading
from typing import Any

from django.conf import settings as django_settings
from django.http import HttpRequest, HttpResponse, HttpResponseForbidden
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from .metrics import CONTENT_TYPE, QueueMetrics

__all__ = ["metrics"]

_lock = threading.Lock()
_cached: dict[tuple[str, str, tuple[str, ...]], QueueMetrics] = {}


def _raw_settings() -> dict[str, Any]:
    raw = getattr(django_settings, "FLOWJOBS", None)
    return raw if isinstance(raw, dict) else {}


def _token() -> str | None:
    return _raw_settings().get("METRICS_TOKEN") or os.environ.get("FLOWJOBS_METRICS_TOKEN")


def _target() -> tuple[str, str, tuple[str, ...]]:
    from . import conf, registry

    current = conf.settings()
    names = set(current.QUEUES) | set(registry.queue_names())
    extra = _raw_settings().get("METRICS_QUEUES") or ()
    names.update(str(name) for name in extra)
    return current.REDIS_URL, current.PREFIX, tuple(sorted(names))


def _allowed(request: HttpRequest) -> bool:
    token = _token()
    header = request.headers.get("Authorization", "")
    if token and header.startswith("Bearer "):
        return hmac.compare_digest(header[len("Bearer ") :].encode(), str(token).encode())
    user = getattr(request, "user", None)
    return bool(user is not None and user.is_authenticated and user.is_staff)


def _metrics_for(target: tuple[str, str, tuple[str, ...]]) -> QueueMetrics:
    with _lock:
        found = _cached.get(target)
        if found is None:
            url, prefix, names = target
            found = _cached[target] = QueueMetrics(names, connection=url, prefix=prefix)
        return found


@never_cache
@require_GET
def metrics(request: HttpRequest) -> HttpResponse:
    """Prometheus text exposition of the configured queues."""
    if not _allowed(request):
        return HttpResponseForbidden("flowjobs metrics: staff or bearer token required\n")
    return HttpResponse(_metrics_for(_target()).exposition(), content_type=CONTENT_TYPE)
