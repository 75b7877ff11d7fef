"""URL configuration of MetTrack.

``/admin/`` Django admin, ``/accounts/`` login/logout, ``/api/v1/`` REST API, ``/api/schema/`` OpenAPI,
``/api/docs/`` Swagger UI (served offline from drf-spectacular-sidecar), ``/healthz`` ``/readyz``
``/metrics`` operations, ``/dicomweb/studies`` DICOMweb STOW-RS. The web pages mount at ``/``
from ``trials.urls`` (namespaces ``dashboard`` and ``exports``).
"""

from django.conf import settings
from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_required
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerSplitView

from trials import urls as trials_urls
from trials.api.dicomweb import StowView
from trials.views import ops
from trials.views.accounts import AuditedPasswordChangeView

# Swagger UI with its settings in a separate script (no inline script: the CSP allows none). Behind the
# login page unless API_DOCS_PUBLIC (the schema view itself answers 401/403 to anonymous requests).
_swagger = SpectacularSwaggerSplitView.as_view(url_name="schema")
swagger_ui = _swagger if settings.API_DOCS_PUBLIC else login_required(_swagger)

# Only the account pages MetTrack uses: no password reset (MetTrack sends no e-mail).
account_urlpatterns = [
    path("login/", auth_views.LoginView.as_view(), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("password_change/", AuditedPasswordChangeView.as_view(), name="password_change"),
    path("password_change/done/", auth_views.PasswordChangeDoneView.as_view(), name="password_change_done"),
]

urlpatterns = [
    # Operations (trials/views/ops.py): liveness, readiness, Prometheus metrics.
    path("healthz", ops.healthz, name="healthz"),
    path("readyz", ops.ReadinessView.as_view(), name="readyz"),
    path("metrics", ops.metrics, name="metrics"),
    path("admin/", admin.site.urls),
    path("accounts/", include(account_urlpatterns)),
    path("api/v1/", include("trials.api.urls")),
    # DICOMweb STOW-RS (trials/api/dicomweb.py): instances over HTTP, routed like C-STORE.
    path("dicomweb/studies", StowView.as_view(), name="stow-rs"),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", swagger_ui, name="swagger-ui"),
]

urlpatterns += [
    path("", include((trials_urls.exports_urlpatterns, "exports"), namespace="exports")),
    path("", include(trials_urls)),
]

# A lost database answers 503 JSON with Retry-After (trials/views/errors.py), whatever the page.
handler500 = "trials.views.errors.server_error"
