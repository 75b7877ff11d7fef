"""URL configuration of MetTrack.

``/admin/`` Django admin, ``/accounts/`` login/logout, ``/api/v1/`` REST API, ``/api/schema/`` OpenAPI,
``/api/docs/`` Swagger UI (served offline from drf-spectacular-sidecar). The web dashboard mounts at
``/`` from ``trials.urls_dashboard``.
"""

from importlib.util import find_spec

from django.conf import settings
from django.conf.urls.static import static
from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

urlpatterns = [
    path("admin/", admin.site.urls),
    path("accounts/", include("django.contrib.auth.urls")),
    path("api/v1/", include("trials.api.urls")),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="swagger-ui"),
]

if find_spec("trials.urls") is not None:
    urlpatterns.append(path("", include("trials.urls")))
# Data-management pages (exports form, data quality): namespace "exports", trials/views_quality.py.
urlpatterns.append(path("", include(("trials.views_quality", "exports"), namespace="exports")))
# The web dashboard (trials/urls_dashboard.py) lives at "/".
urlpatterns.append(path("", include("trials.urls_dashboard")))

if settings.DEBUG:
    urlpatterns += static(settings.MEDIA_URL, document_root=settings.MEDIA_ROOT)
