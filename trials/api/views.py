"""REST API viewsets (``/api/v1/``).

Every queryset is limited to the trials the user is a member of, so other trials' objects answer 404.
Writes need the capability of ``trials.permissions.ROLE_CAPABILITIES`` and call actions.
Verbs are ``@action``s: ``assessments/{id}/confirm/``, ``assessments/{id}/override/``; the series
upload (``POST timepoints/{id}/series/``) and ``series/{id}/segment/`` are added by the pipeline.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from django.db.models import QuerySet
from django.http import FileResponse, HttpResponse
from django.urls import reverse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import NotFound, PermissionDenied
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.serializers import BaseSerializer
from rest_framework.settings import api_settings

from trials.actions import accounts, assessments, governance, training
from trials.actions import imaging as imaging_actions
from trials.actions import jobs as job_actions
from trials.actions import trials as trial_actions
from trials.api import filtersets
from trials.api import serializers as s
from trials.models import (
    Assessment,
    AuditEvent,
    ImagingSeries,
    Lesion,
    LesionObservation,
    ModelVersion,
    Patient,
    ProcessingJob,
    SegmentationRun,
    Site,
    Timepoint,
    TrainingSet,
    Trial,
    TrialMembership,
    TrialModel,
)
from trials.permissions import (
    EDIT_LESIONS,
    MANAGE_MEMBERSHIPS,
    MANAGE_PATIENTS,
    MANAGE_TRIAL,
    REVIEW_ASSESSMENTS,
    TrialObjectPermission,
    has_capability,
    visible_trial_ids,
)
from trials.storage import RUN_FILE_KINDS, media_path, run_file_path, stored_name, zip_folder
from trials.views.report import report_pdf_response

# No PUT: partial updates only, so a client never resets fields it did not send.
_READ_WRITE = ["get", "post", "patch", "head", "options"]


class StrictListMixin:
    """A list answers 400 for a query parameter it does not know, naming it (a typo is not "all rows").

    Known: the filters of ``filterset_class``, the paginator's ``page`` and ``page_size``, ``ordering``
    and ``format``. Only ``list`` checks: detail views and verbs keep their own parameters (``?reason=``).
    """

    def list(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        filterset_class = getattr(self, "filterset_class", None)
        if filterset_class is not None:
            allowed = {api_settings.ORDERING_PARAM, api_settings.URL_FORMAT_OVERRIDE}
            paginator = getattr(self, "paginator", None)
            for attr in ("page_query_param", "page_size_query_param"):
                if getattr(paginator, attr, None):
                    allowed.add(getattr(paginator, attr))
            unknown = filtersets.unknown_query_parameters(filterset_class, request.query_params, allowed)
            if unknown:
                known = sorted(set(filterset_class.base_filters) | allowed)
                body: dict[str, Any] = {
                    "detail": f"Unknown query parameter(s) {', '.join(unknown)}; use {', '.join(known)}."
                }
                body.update({name: ["Unknown query parameter."] for name in unknown})
                return Response(body, status=status.HTTP_400_BAD_REQUEST)
        return super().list(request, *args, **kwargs)  # type: ignore[misc]


class TrialScopedViewSet(StrictListMixin, viewsets.GenericViewSet):
    """Base: queryset limited to visible trials, writes checked against ``write_capability``.

    Subclasses set ``queryset`` (with its select_related), ``trial_path`` (lookup to the trial) and,
    when writable, ``write_capability`` and ``trial_for_create``.
    """

    permission_classes = [TrialObjectPermission]
    trial_path: str = "trial"
    write_capability: str | None = None
    action_capabilities: dict[str, str] = {}

    def get_queryset(self) -> QuerySet[Any]:
        queryset = super().get_queryset()
        return queryset.filter(**{f"{self.trial_path}__in": visible_trial_ids(self.request.user)})

    def trial_for_create(self, validated_data: dict[str, Any]) -> Trial | None:
        """The trial a new object will belong to."""
        raise NotImplementedError

    def perform_create(self, serializer: BaseSerializer) -> None:
        trial = self.trial_for_create(serializer.validated_data)
        if self.write_capability is None or not has_capability(
            self.request.user, trial, self.write_capability
        ):
            raise PermissionDenied("Your role in this trial does not allow creating this object.")
        serializer.save()


class WritableViewSet(
    # TrialScopedViewSet first: its perform_create (the capability check) must win over the mixin's.
    TrialScopedViewSet,
    mixins.CreateModelMixin,
    mixins.RetrieveModelMixin,
    mixins.UpdateModelMixin,
    mixins.ListModelMixin,
):
    """List, retrieve, create, partial update (no delete: clinical data is never deleted)."""

    http_method_names = _READ_WRITE


class ReadOnlyViewSet(TrialScopedViewSet, mixins.RetrieveModelMixin, mixins.ListModelMixin):
    """List and retrieve only."""


class ReassessmentJobSerializer(serializers.Serializer):
    """The re-assessment job a change of a trial's criteria settings queued (follow it at ``url``)."""

    id = serializers.IntegerField()
    kind = serializers.CharField()
    state = serializers.CharField()
    url = serializers.URLField(help_text="The job's progress: GET /api/v1/jobs/{id}/.")


class TrialUpdateResponseSerializer(s.TrialSerializer):
    """A PATCH of a trial answers the trial and the re-assessment job it queued (null when none)."""

    reassessment_job = ReassessmentJobSerializer(read_only=True, allow_null=True)

    class Meta(s.TrialSerializer.Meta):
        fields = [*s.TrialSerializer.Meta.fields, "reassessment_job"]


class TrialViewSet(WritableViewSet):
    """Trials the user is a member of. Creating a trial is for superusers; trial admins edit it."""

    queryset = Trial.objects.all()
    serializer_class = s.TrialSerializer
    filterset_class = filtersets.TrialFilterSet
    trial_path = "pk"
    write_capability = MANAGE_TRIAL
    ordering_fields = ["code", "created_at"]

    def perform_create(self, serializer: BaseSerializer) -> None:
        if not self.request.user.is_superuser:
            raise PermissionDenied("Only a superuser can create a trial.")
        serializer.save()

    _reassessment_job: ProcessingJob | None = None

    def perform_update(self, serializer: BaseSerializer) -> None:
        serializer.save()
        self._reassessment_job = getattr(serializer, "queued_job", None)

    @extend_schema(responses=TrialUpdateResponseSerializer)
    def partial_update(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        """Change a trial. A change of its response-criteria settings queues one job re-assessing every
        patient; ``reassessment_job`` names it (id, kind, state, URL of its progress), null when none."""
        response = super().partial_update(request, *args, **kwargs)
        job = self._reassessment_job
        response.data["reassessment_job"] = None
        if job is not None:
            response.data["reassessment_job"] = {
                "id": job.pk,
                "kind": job.kind,
                "state": job.state,
                "url": request.build_absolute_uri(reverse("api:job-detail", args=[job.pk])),
            }
        return response


class SiteViewSet(WritableViewSet):
    """Sites of the user's trials; trial admins manage them."""

    queryset = Site.objects.all()
    serializer_class = s.SiteSerializer
    filterset_class = filtersets.SiteFilterSet
    write_capability = MANAGE_TRIAL
    ordering_fields = ["code"]

    def trial_for_create(self, validated_data: dict[str, Any]) -> Trial | None:
        return validated_data["trial"]


class TrialMembershipViewSet(WritableViewSet, mixins.DestroyModelMixin):
    """Memberships of the user's trials; trial admins add, change and remove them."""

    queryset = TrialMembership.objects.select_related("user")
    serializer_class = s.TrialMembershipSerializer
    filterset_class = filtersets.TrialMembershipFilterSet
    write_capability = MANAGE_MEMBERSHIPS
    http_method_names = [*_READ_WRITE, "delete"]
    ordering_fields = ["role", "created_at"]

    def trial_for_create(self, validated_data: dict[str, Any]) -> Trial | None:
        return validated_data["trial"]

    @extend_schema(
        parameters=[
            OpenApiParameter(
                "reason",
                str,
                required=True,
                description="Why the membership ends (audit trail); or in the body.",
            )
        ]
    )
    def destroy(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        """Remove a membership; ``reason`` is required (query parameter or JSON body): 400 without."""
        return super().destroy(request, *args, **kwargs)

    def perform_destroy(self, instance: TrialMembership) -> None:
        body = self.request.data if isinstance(self.request.data, dict) else {}
        reason = self.request.query_params.get("reason") or str(body.get("reason") or "")
        if len(reason) > 2000:
            raise serializers.ValidationError({"reason": ["At most 2000 characters."]})
        trial_actions.remove_membership(
            instance,
            actor=self.request.user,
            reason=reason,
            correlation_id=getattr(self.request, "correlation_id", ""),
        )


class PatientViewSet(WritableViewSet):
    """Patients of the user's trials; data managers create and edit them."""

    queryset = Patient.objects.all()
    serializer_class = s.PatientSerializer
    filterset_class = filtersets.PatientFilterSet
    write_capability = MANAGE_PATIENTS
    ordering_fields = ["subject_id", "enrolment_date", "created_at"]

    def trial_for_create(self, validated_data: dict[str, Any]) -> Trial | None:
        return validated_data["trial"]


class TimepointViewSet(WritableViewSet):
    """Visits; data managers create and edit them."""

    queryset = Timepoint.objects.select_related("patient")
    serializer_class = s.TimepointSerializer
    filterset_class = filtersets.TimepointFilterSet
    trial_path = "patient__trial"
    write_capability = MANAGE_PATIENTS
    ordering_fields = ["scan_date", "visit_label"]

    def trial_for_create(self, validated_data: dict[str, Any]) -> Trial | None:
        return validated_data["patient"].trial

    @extend_schema(responses=s.ImagingSeriesSerializer(many=True))
    @action(detail=True, methods=["get"], url_path="series")
    def series(self, request: Request, pk: str | None = None) -> Response:
        """Series of this visit. (The pipeline adds POST here: upload of one series -> 202 with a job.)"""
        timepoint = self.get_object()
        queryset = ImagingSeries.objects.filter(timepoint=timepoint).select_related("timepoint")
        page = self.paginate_queryset(queryset)
        serializer = s.ImagingSeriesSerializer(page, many=True, context=self.get_serializer_context())
        return self.get_paginated_response(serializer.data)

    @extend_schema(responses={(200, "application/pdf"): bytes})
    @action(detail=True, methods=["get"], url_path="report")
    def report(self, request: Request, pk: str | None = None) -> HttpResponse:
        """The visit's RANO-BM report as PDF (the dashboard's report page, printable); audited."""
        return report_pdf_response(self.get_object(), request.user, getattr(request, "correlation_id", ""))


class ImagingSeriesViewSet(ReadOnlyViewSet):
    """Imaging series of the user's trials (read-only; upload is a visit action)."""

    queryset = ImagingSeries.objects.select_related("timepoint")
    serializer_class = s.ImagingSeriesSerializer
    filterset_class = filtersets.ImagingSeriesFilterSet
    trial_path = "timepoint__patient__trial"
    ordering_fields = ["created_at"]

    @extend_schema(responses={(200, "application/octet-stream"): bytes})
    @action(detail=True, methods=["get"])
    def volume(self, request: Request, pk: str | None = None) -> FileResponse:
        """Download the stored volume of the series (uncompressed NIfTI, the grid the lesions are on)."""
        series = self.get_object()
        path = media_path(stored_name(series.volume_file)) if series.volume_file else None
        if path is None or not path.is_file():
            raise NotFound(f"Series {series.pk} has no stored volume.")
        accounts.record_download(
            series, kind="volume", actor=request.user, correlation_id=getattr(request, "correlation_id", "")
        )
        return FileResponse(
            path.open("rb"),
            as_attachment=True,
            filename=f"series{series.pk}.nii",
            content_type="application/octet-stream",
        )


class SegmentationRunViewSet(ReadOnlyViewSet):
    """Segmentation runs of the user's trials (read-only), with their stored outputs for download."""

    queryset = SegmentationRun.objects.select_related("model_version")
    serializer_class = s.SegmentationRunSerializer
    filterset_class = filtersets.SegmentationRunFilterSet
    trial_path = "series__timepoint__patient__trial"
    ordering_fields = ["created_at", "finished_at"]

    @extend_schema(responses={(200, "application/octet-stream"): bytes})
    @action(detail=True, methods=["get"], url_path=r"files/(?P<kind>[a-z]+)")
    def file(self, request: Request, pk: str | None = None, kind: str = "") -> FileResponse:
        """Download one output of the run: ``mask``, ``lesions``, ``rtstruct``, ``seg`` or ``sr`` (the
        visit's TID 1500 measurement report, with the current assessment's response)."""
        run = self.get_object()
        if kind == "sr":
            path = imaging_actions.measurement_report_file(run)
            name, media_type = "measurements-sr.dcm", "application/dicom"
        elif kind in RUN_FILE_KINDS:
            path = run_file_path(run, kind)
            name, media_type = RUN_FILE_KINDS[kind]
        else:
            kinds = ", ".join([*RUN_FILE_KINDS, "sr"])
            raise NotFound(f"Unknown file kind {kind!r}; use one of {kinds}.")
        if path is None:
            raise NotFound(f"Segmentation run {run.pk} has no {kind} file.")
        accounts.record_download(
            run, kind=kind, actor=request.user, correlation_id=getattr(request, "correlation_id", "")
        )
        return FileResponse(
            path.open("rb"), as_attachment=True, filename=f"run{run.pk}_{name}", content_type=media_type
        )


class ModelVersionViewSet(StrictListMixin, viewsets.ReadOnlyModelViewSet):
    """Registered segmentation models (not trial-specific; any signed-in user may read them), with their
    lifecycle (registered, validated, retired) and validation report."""

    queryset = ModelVersion.objects.all()
    serializer_class = s.ModelVersionSerializer
    filterset_class = filtersets.ModelVersionFilterSet

    @extend_schema(request=s.ValidateModelSerializer, responses={202: s.ProcessingJobSerializer})
    @action(detail=True, methods=["post"])
    def validate(self, request: Request, pk: str | None = None) -> Response:
        """Queue the validation of this version on a trial's signed visits (trial admins of the trial);
        the report is stored with the version, which becomes validated. Follow the job."""
        version = self.get_object()
        data = s.ValidateModelSerializer(data=request.data, context=self.get_serializer_context())
        data.is_valid(raise_exception=True)
        trial = data.validated_data["trial"]
        if not has_capability(request.user, trial, MANAGE_TRIAL):
            raise PermissionDenied("Only a trial admin of this trial can validate models on its visits.")
        job = governance.start_validation(
            version, trial, actor=request.user, correlation_id=getattr(request, "correlation_id", "")
        )
        return Response(
            s.ProcessingJobSerializer(job, context=self.get_serializer_context()).data,
            status=status.HTTP_202_ACCEPTED,
        )

    @extend_schema(responses={(200, "text/html"): bytes})
    @action(detail=True, methods=["get"])
    def report(self, request: Request, pk: str | None = None) -> FileResponse:
        """Download the model's validation report (self-contained HTML; works offline)."""
        version = self.get_object()
        if not version.validation_report:
            raise NotFound("This model version has no validation report yet.")
        return FileResponse(
            version.validation_report.open("rb"),
            as_attachment=True,
            filename=f"validation-{version.name}-{version.version}.html",
            content_type="text/html",
        )


class TrialModelViewSet(ReadOnlyViewSet):
    """The models of a trial: shadow candidates, approved for use (a trial admin's e-signature), active,
    retired.

    ``approve`` signs (password entered again, meaning "approved for use", reason required) and needs a
    validated version (the demo model in a demo trial excepted); ``activate`` makes an approved model the
    one the pipeline runs for the trial's new series; ``retire`` stops its use in the trial. ``shadow``
    puts a registered or validated version in shadow (it segments new visits for comparison only; not an
    approval), ``stop-shadow`` stops it, ``shadow-agreement`` is its agreement with the active model.
    """

    queryset = TrialModel.objects.select_related("model_version", "trial")
    serializer_class = s.TrialModelSerializer
    filterset_class = filtersets.TrialModelFilterSet
    action_capabilities = {"activate": MANAGE_TRIAL, "retire": MANAGE_TRIAL, "stop_shadow": MANAGE_TRIAL}
    ordering_fields = ["created_at"]

    def get_throttles(self) -> list[Any]:
        if self.action == "approve":
            self.throttle_scope = "signature"  # signatures re-enter a password: a stricter rate
        return super().get_throttles()

    @extend_schema(request=s.ApproveModelSerializer, responses={201: s.TrialModelSerializer})
    @action(detail=False, methods=["post"])
    def approve(self, request: Request) -> Response:
        """Approve a validated model version for a trial, signed by the trial admin's password."""
        data = s.ApproveModelSerializer(data=request.data, context=self.get_serializer_context())
        data.is_valid(raise_exception=True)
        trial = data.validated_data["trial"]
        if not has_capability(request.user, trial, MANAGE_TRIAL):
            raise PermissionDenied("Only a trial admin of this trial can approve its models.")
        row = governance.approve_model(
            trial,
            data.validated_data["model_version"],
            actor=request.user,
            password=data.validated_data["password"],
            reason=data.validated_data["reason"],
            correlation_id=getattr(request, "correlation_id", ""),
        )
        return Response(
            s.TrialModelSerializer(row, context=self.get_serializer_context()).data,
            status=status.HTTP_201_CREATED,
        )

    @extend_schema(request=s.ShadowModelSerializer, responses={201: s.TrialModelSerializer})
    @action(detail=False, methods=["post"])
    def shadow(self, request: Request) -> Response:
        """Put a registered or validated version in shadow for a trial (one candidate per trial): each new
        visit is also segmented by it, for comparison only. Not an approval."""
        data = s.ShadowModelSerializer(data=request.data, context=self.get_serializer_context())
        data.is_valid(raise_exception=True)
        trial = data.validated_data["trial"]
        if not has_capability(request.user, trial, MANAGE_TRIAL):
            raise PermissionDenied("Only a trial admin of this trial can put its models in shadow.")
        row = governance.start_shadow(
            trial,
            data.validated_data["model_version"],
            actor=request.user,
            reason=data.validated_data["reason"],
            correlation_id=getattr(request, "correlation_id", ""),
        )
        return Response(
            s.TrialModelSerializer(row, context=self.get_serializer_context()).data,
            status=status.HTTP_201_CREATED,
        )

    @extend_schema(request=s.ModelChangeSerializer, responses=s.TrialModelSerializer)
    @action(detail=True, methods=["post"], url_path="stop-shadow")
    def stop_shadow(self, request: Request, pk: str | None = None) -> Response:
        """Stop this shadow candidate: new visits are no longer segmented by it (its runs stay)."""
        return self._change(request, governance.stop_shadow)

    @extend_schema(responses={200: OpenApiTypes.OBJECT})
    @action(detail=True, methods=["get"], url_path="shadow-agreement")
    def shadow_agreement(self, request: Request, pk: str | None = None) -> Response:
        """The candidate's agreement with the active model on the trial's visits with both runs: lesion
        detection, total volume (CCC, Bland-Altman) and RANO-BM responses (as the quality page shows)."""
        row = self.get_object()
        return Response({"trial_model": row.pk, "status": row.status, **(row.shadow_agreement or {})})

    @extend_schema(request=s.ModelChangeSerializer, responses=s.TrialModelSerializer)
    @action(detail=True, methods=["post"])
    def activate(self, request: Request, pk: str | None = None) -> Response:
        """Make this approved model the trial's active model (the previous one goes back to approved)."""
        return self._change(request, governance.activate_model)

    @extend_schema(request=s.ModelChangeSerializer, responses=s.TrialModelSerializer)
    @action(detail=True, methods=["post"])
    def retire(self, request: Request, pk: str | None = None) -> Response:
        """Retire this model in the trial: the pipeline refuses it there from now on."""
        return self._change(request, governance.retire_trial_model)

    def _change(self, request: Request, change: Callable[..., Any]) -> Response:
        """Apply a governance action with the request's reason to this trial's model row."""
        row = self.get_object()
        data = s.ModelChangeSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        row = change(
            row,
            actor=request.user,
            reason=data.validated_data["reason"],
            correlation_id=getattr(request, "correlation_id", ""),
        )
        return Response(s.TrialModelSerializer(row, context=self.get_serializer_context()).data)


class TrainingSetViewSet(ReadOnlyViewSet):
    """A trial's signed reads exported as training sets (README "Learning from the readers").

    ``POST`` exports one (trial admins; ``hold_out`` the patients of a validation set, or
    ``hold_out_fraction``); ``download`` is the zip of its files (bm-train's ``--data`` layout and
    ``manifest.json``); ``fine-tune`` queues a fine-tuning job (queue gpu) whose model is registered as a
    new version, to be validated and approved before use.
    """

    queryset = TrainingSet.objects.select_related("trial")
    serializer_class = s.TrainingSetSerializer
    filterset_class = filtersets.TrainingSetFilterSet
    action_capabilities = {"download": MANAGE_TRIAL, "fine_tune": MANAGE_TRIAL}
    ordering_fields = ["created_at"]

    @extend_schema(request=s.ExportTrainingSetSerializer, responses={201: s.TrainingSetSerializer})
    def create(self, request: Request) -> Response:
        """Export the trial's signed visits as a training set, the held-out patients left out."""
        data = s.ExportTrainingSetSerializer(data=request.data, context=self.get_serializer_context())
        data.is_valid(raise_exception=True)
        trial = data.validated_data["trial"]
        if not has_capability(request.user, trial, MANAGE_TRIAL):
            raise PermissionDenied("Only a trial admin of this trial can export its training sets.")
        row = training.export_training_set(
            trial,
            actor=request.user,
            hold_out=data.validated_data["hold_out"],
            hold_out_fraction=data.validated_data["hold_out_fraction"],
            correlation_id=getattr(request, "correlation_id", ""),
        )
        return Response(
            s.TrainingSetSerializer(row, context=self.get_serializer_context()).data,
            status=status.HTTP_201_CREATED,
        )

    @extend_schema(responses={(200, "application/zip"): bytes})
    @action(detail=True, methods=["get"])
    def download(self, request: Request, pk: str | None = None) -> FileResponse:
        """Download the training set as a zip (trial admins; audited)."""
        row = self.get_object()
        archive = zip_folder(row.directory)
        accounts.record_download(
            row,
            kind="training set zip",
            actor=request.user,
            correlation_id=getattr(request, "correlation_id", ""),
        )
        return FileResponse(
            archive,
            as_attachment=True,
            filename=f"{Path(row.directory).name}.zip",
            content_type="application/zip",
        )

    @extend_schema(request=s.FineTuneSerializer, responses={202: s.ProcessingJobSerializer})
    @action(detail=True, methods=["post"], url_path="fine-tune")
    def fine_tune(self, request: Request, pk: str | None = None) -> Response:
        """Queue a fine-tuning job on this training set from the trial's active model; follow the job."""
        row = self.get_object()
        data = s.FineTuneSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        job = training.start_fine_tuning(
            row,
            actor=request.user,
            correlation_id=getattr(request, "correlation_id", ""),
            **data.validated_data,
        )
        return Response(
            s.ProcessingJobSerializer(job, context=self.get_serializer_context()).data,
            status=status.HTTP_202_ACCEPTED,
        )


class LesionViewSet(WritableViewSet):
    """Lesions; radiologists create them and edit roles and flags."""

    queryset = Lesion.objects.all()
    serializer_class = s.LesionSerializer
    filterset_class = filtersets.LesionFilterSet
    trial_path = "patient__trial"
    write_capability = EDIT_LESIONS
    ordering_fields = ["label", "created_at"]

    def trial_for_create(self, validated_data: dict[str, Any]) -> Trial | None:
        return validated_data["patient"].trial


class LesionObservationViewSet(WritableViewSet):
    """Lesion observations; radiologists add missed lesions' measurements and correct the AI's."""

    queryset = LesionObservation.objects.select_related("lesion")
    serializer_class = s.LesionObservationSerializer
    filterset_class = filtersets.LesionObservationFilterSet
    trial_path = "lesion__patient__trial"
    write_capability = EDIT_LESIONS
    ordering_fields = ["timepoint", "lesion", "longest_diameter_mm"]

    def trial_for_create(self, validated_data: dict[str, Any]) -> Trial | None:
        return validated_data["lesion"].patient.trial


class AssessmentViewSet(ReadOnlyViewSet):
    """Assessments; radiologists confirm or override the current one of a visit."""

    queryset = Assessment.objects.select_related("signed_by")
    serializer_class = s.AssessmentSerializer
    filterset_class = filtersets.AssessmentFilterSet
    trial_path = "timepoint__patient__trial"
    action_capabilities = {"confirm": REVIEW_ASSESSMENTS, "override": REVIEW_ASSESSMENTS}
    ordering_fields = ["created_at", "timepoint"]

    def get_throttles(self) -> list[Any]:
        if self.action in ("confirm", "override"):
            self.throttle_scope = "signature"  # signatures re-enter a password: a stricter rate
        return super().get_throttles()

    @extend_schema(request=s.ConfirmAssessmentSerializer, responses=s.AssessmentSerializer)
    @action(detail=True, methods=["post"])
    def confirm(self, request: Request, pk: str | None = None) -> Response:
        """Confirm the AI's (or a previous reader's) response and sign it (password entered again)."""
        assessment = self.get_object()
        data = s.ConfirmAssessmentSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        confirmed = assessments.confirm_assessment(
            assessment,
            actor=request.user,
            password=data.validated_data["password"],
            reason=data.validated_data.get("reason", ""),
            correlation_id=getattr(request, "correlation_id", ""),
        )
        return Response(s.AssessmentSerializer(confirmed, context=self.get_serializer_context()).data)

    @extend_schema(request=s.OverrideAssessmentSerializer, responses={201: s.AssessmentSerializer})
    @action(detail=True, methods=["post"])
    def override(self, request: Request, pk: str | None = None) -> Response:
        """Replace the response with the reader's, with a reason; returns the new signed assessment."""
        assessment = self.get_object()
        data = s.OverrideAssessmentSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        values = dict(data.validated_data)
        new = assessments.override_assessment(  # derived fields follow the reader; later visits re-assessed
            assessment,
            overall_response=values.pop("overall_response"),
            reason=values.pop("reason"),
            password=values.pop("password"),
            actor=request.user,
            correlation_id=getattr(request, "correlation_id", ""),
            **values,
        )
        return Response(
            s.AssessmentSerializer(new, context=self.get_serializer_context()).data,
            status=status.HTTP_201_CREATED,
        )

    @extend_schema(responses={(200, "application/dicom"): bytes})
    @action(detail=True, methods=["get"])
    def sr(self, request: Request, pk: str | None = None) -> FileResponse:
        """Download the DICOM SR (TID 1500) of a signed assessment: the visit's lesions with this
        assessment's response and signer (404 while it is a draft or the visit has no SEG)."""
        assessment = self.get_object()
        path = imaging_actions.signed_assessment_report_file(assessment)
        if path is None:
            raise NotFound(f"Assessment {assessment.pk} has no measurement report (not signed, or no SEG).")
        accounts.record_download(
            assessment, kind="sr", actor=request.user, correlation_id=getattr(request, "correlation_id", "")
        )
        return FileResponse(
            path.open("rb"),
            as_attachment=True,
            filename=f"assessment{assessment.pk}_measurements-sr.dcm",
            content_type="application/dicom",
        )


class AuditEventViewSet(ReadOnlyViewSet):
    """The audit trail of the user's trials (read-only; events outside any trial: superusers)."""

    queryset = AuditEvent.objects.all()
    serializer_class = s.AuditEventSerializer
    filterset_class = filtersets.AuditEventFilterSet
    ordering_fields = ["created_at"]

    def get_queryset(self) -> QuerySet[Any]:
        if self.request.user.is_superuser:
            return AuditEvent.objects.all()
        return super().get_queryset()


class ProcessingJobViewSet(ReadOnlyViewSet):
    """Background jobs of the user's trials, shown as progress; a failed one can be run again."""

    queryset = ProcessingJob.objects.select_related("content_type")
    serializer_class = s.ProcessingJobSerializer
    filterset_class = filtersets.ProcessingJobFilterSet
    ordering_fields = ["enqueued_at", "state"]

    def get_queryset(self) -> QuerySet[Any]:
        if self.request.user.is_superuser:
            return ProcessingJob.objects.select_related("content_type")
        return super().get_queryset()

    @extend_schema(request=s.RetryJobSerializer, responses={202: s.ProcessingJobSerializer})
    @action(detail=True, methods=["post"])
    def retry(self, request: Request, pk: str | None = None) -> Response:
        """Run a failed job again (data managers and trial admins); its stored outputs are reused.

        409 when the job has not failed.
        """
        job = self.get_object()
        if not any(has_capability(request.user, job.trial, c) for c in (MANAGE_PATIENTS, MANAGE_TRIAL)):
            raise PermissionDenied("Your role in this trial does not allow running jobs again.")
        data = s.RetryJobSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        job = job_actions.retry_job(
            job,
            actor=request.user,
            reason=data.validated_data["reason"],
            correlation_id=getattr(request, "correlation_id", ""),
        )
        return Response(
            s.ProcessingJobSerializer(job, context=self.get_serializer_context()).data, status=202
        )
