"""URL configuration of MetTrack.

``/admin/`` Django admin, ``/accounts/`` login/logout, ``/api/v1/`` REST API, ``/api/schema/`` OpenAPI,
``/api/docs/`` Swagger UI (served offline from drf-spectacular-sidecar). The web pages mount at ``/``
from ``trials.urls`` (namespaces ``dashboard`` and ``exports``).
"""

from django.conf import settings
from django.conf.urls.static import static
from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from trials import urls as trials_urls

urlpatterns = [
    path("admin/", admin.site.urls),
    path("accounts/", include("django.contrib.auth.urls")),
    path("api/v1/", include("trials.api.urls")),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="swagger-ui"),
]

urlpatterns += [
    path("", include((trials_urls.exports_urlpatterns, "exports"), namespace="exports")),
    path("", include(trials_urls)),
]

if settings.DEBUG:
    urlpatterns += static(settings.MEDIA_URL, document_root=settings.MEDIA_ROOT)
