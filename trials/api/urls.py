"""Routes of the REST API, mounted at ``/api/v1/``."""

from django.urls import include, path
from rest_framework.routers import DefaultRouter

from trials.api import auth, pacs, uploads, views
from trials.api.exports import TrialDefineXmlView, TrialExportView, TrialSubmissionFileView

app_name = "api"

router = DefaultRouter()
router.register("trials", views.TrialViewSet, basename="trial")
router.register("sites", views.SiteViewSet, basename="site")
router.register("memberships", views.TrialMembershipViewSet, basename="membership")
router.register("patients", views.PatientViewSet, basename="patient")
router.register("timepoints", views.TimepointViewSet, basename="timepoint")
router.register("series", views.ImagingSeriesViewSet, basename="series")
router.register("segmentation-runs", views.SegmentationRunViewSet, basename="segmentationrun")
router.register("model-versions", views.ModelVersionViewSet, basename="modelversion")
router.register("trial-models", views.TrialModelViewSet, basename="trialmodel")
router.register("training-sets", views.TrainingSetViewSet, basename="trainingset")
router.register("lesions", views.LesionViewSet, basename="lesion")
router.register("observations", views.LesionObservationViewSet, basename="observation")
router.register("assessments", views.AssessmentViewSet, basename="assessment")
router.register("audit-events", views.AuditEventViewSet, basename="auditevent")
router.register("jobs", views.ProcessingJobViewSet, basename="job")
router.register("inbox", pacs.ReceivedStudyViewSet, basename="receivedstudy")
router.register("pacs-deliveries", pacs.PacsDeliveryViewSet, basename="pacsdelivery")

urlpatterns = [
    path("auth/token/", auth.ObtainTokenView.as_view(), name="token"),
    path("auth/token/rotate/", auth.RotateTokenView.as_view(), name="token-rotate"),
    path("auth/token/revoke/", auth.RevokeTokenView.as_view(), name="token-revoke"),
    path("auth/token/revoke-all/", auth.RevokeAllTokensView.as_view(), name="token-revoke-all"),
    # Before the router: POST uploads a series; GET is the router's list of the visit's series.
    path("timepoints/<int:pk>/series/", uploads.SeriesUploadView.as_view(), name="timepoint-series-upload"),
    path(
        "patients/<int:pk>/subject-mapping/",
        pacs.SubjectMappingView.as_view(),
        name="patient-subject-mapping",
    ),
    path("series/<int:pk>/segment/", uploads.SeriesSegmentView.as_view(), name="series-segment"),
    path("trials/<int:pk>/exports/<str:kind>.csv", TrialExportView.as_view(), name="trial-export"),
    path("trials/<int:pk>/exports/define.xml", TrialDefineXmlView.as_view(), name="trial-define-xml"),
    path(
        "trials/<int:pk>/exports/<str:name>.xpt",
        TrialSubmissionFileView.as_view(),
        name="trial-submission-file",
    ),
    path("", include(router.urls)),
]
