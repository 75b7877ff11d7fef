"""URL configuration of MetTrack.

``/admin/`` Django admin, ``/accounts/`` login/logout, ``/api/v1/`` REST API, ``/api/schema/`` OpenAPI,
``/api/docs/`` Swagger UI (served offline from drf-spectacular-sidecar), ``/healthz`` ``/readyz``
``/metrics`` operations, ``/dicomweb/studies`` DICOMweb STOW-RS. The web pages mount at ``/``
from ``trials.urls`` (namespaces ``dashboard`` and ``exports``).
"""

from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from trials import urls as trials_urls
from trials.api.dicomweb import StowView
from trials.views import ops

urlpatterns = [
    # Operations (trials/views/ops.py): liveness, readiness, Prometheus metrics.
    path("healthz", ops.healthz, name="healthz"),
    path("readyz", ops.ReadinessView.as_view(), name="readyz"),
    path("metrics", ops.metrics, name="metrics"),
    path("admin/", admin.site.urls),
    path("accounts/", include("django.contrib.auth.urls")),
    path("api/v1/", include("trials.api.urls")),
    # DICOMweb STOW-RS (trials/api/dicomweb.py): instances over HTTP, routed like C-STORE.
    path("dicomweb/studies", StowView.as_view(), name="stow-rs"),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="swagger-ui"),
]

urlpatterns += [
    path("", include((trials_urls.exports_urlpatterns, "exports"), namespace="exports")),
    path("", include(trials_urls)),
]

# A lost database answers 503 JSON with Retry-After (trials/views/errors.py), whatever the page.
handler500 = "trials.views.errors.server_error"
