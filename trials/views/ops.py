"""Operations endpoints: liveness (``/healthz``), readiness (``/readyz``) and metrics (``/metrics``).

- ``/healthz`` answers 200 while the process serves requests (no dependency is checked: an orchestrator
  restarts a process that stops answering, not one whose database is down).
- ``/readyz`` runs :func:`trials.health.readiness_checks` (database, storage and free space, the model
  weights' checksum; with a broker, the broker and a worker on every queue) and answers 200 or 503 with
  each check's result (JSON for ``Accept: application/json``, text otherwise).
- ``/metrics`` is the Prometheus exposition: request counts and latencies (django-prometheus, summed over
  the gunicorn processes in multiprocess mode) and MetTrack's own state (:mod:`trials.metrics`). It is
  for the monitoring system only: a bearer token (``METRICS_TOKEN``) or, without one, loopback clients.
"""

from __future__ import annotations

import hmac
import os
from typing import Any

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET
from health_check.views import HealthCheckView
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest, multiprocess

from trials.health import readiness_checks
from trials.metrics import MetTrackCollector


@never_cache
@require_GET
def healthz(request: HttpRequest) -> HttpResponse:
    """Liveness: the process answers."""
    return JsonResponse({"status": "ok"})


class ReadinessView(HealthCheckView):
    """Readiness: every dependency of the node answers (503 otherwise, so a balancer stops sending work)."""

    def get_checks(self) -> Any:
        self.checks = readiness_checks()
        return super().get_checks()

    def render_to_response(self, context: dict[str, Any], **kwargs: Any) -> HttpResponse:
        return self.render_to_response_text(kwargs.get("status", 200))

    def render_to_response_json(self, status: int) -> HttpResponse:
        return super().render_to_response_json(503 if status >= 500 else status)

    def render_to_response_text(self, status: int) -> HttpResponse:
        return super().render_to_response_text(503 if status >= 500 else status)


def _metrics_allowed(request: HttpRequest) -> bool:
    token = getattr(settings, "METRICS_TOKEN", "")
    if token:
        supplied = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        return hmac.compare_digest(supplied.encode(), token.encode())
    return request.META.get("REMOTE_ADDR", "") in ("127.0.0.1", "::1")


_COLLECTOR = MetTrackCollector()


@never_cache
@require_GET
def metrics(request: HttpRequest) -> HttpResponse:
    """The Prometheus text exposition (403 for a client without the metrics token)."""
    if not _metrics_allowed(request):
        return HttpResponse("Metrics are for the monitoring system.", status=403, content_type="text/plain")
    registry = CollectorRegistry()
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # gunicorn: every worker process writes its samples to this folder; the scrape sums them.
        multiprocess.MultiProcessCollector(registry)
    else:
        for collector in list(REGISTRY._collector_to_names):  # noqa: SLF001 - the process's own metrics
            registry.register(collector)
    registry.register(_COLLECTOR)
    return HttpResponse(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)


__all__ = ["ReadinessView", "healthz", "metrics"]
