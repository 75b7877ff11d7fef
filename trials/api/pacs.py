"""PACS inbox of the API: ``/api/v1/inbox/`` lists received studies and resolves those not routed.

``GET /api/v1/inbox/`` (``?state=inbox`` for the pending ones) lists what the DICOM listener, STOW-RS or
a pull received: sender, study date, series (description, flags, the rules' verdicts), the routing
decision with its reasons, and the outcome. ``POST /api/v1/inbox/{id}/assign/`` stores a pending study
for a visit (``timepoint``, or ``patient`` with ``visit_label`` for a new unscheduled visit), and
``POST /api/v1/inbox/{id}/discard/`` drops it with a reason; both need ``manage_patients`` in the trial
concerned and are audited. No Patient ID, or hash of one, is ever part of an answer.
"""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet
from drf_spectacular.utils import extend_schema
from rest_framework import serializers, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import NotFound, PermissionDenied
from rest_framework.permissions import IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from trials.actions.pacs import assign_received_study, discard_received_study, map_subject
from trials.api.views import ReadOnlyViewSet
from trials.models import PacsDelivery, Patient, ReceivedStudy, Timepoint
from trials.permissions import MANAGE_PATIENTS, has_capability, visible_received_studies, visible_trial_ids

#: Keys of a received series shown in the API (its spool folder name stays inside).
SERIES_KEYS = (
    "series_instance_uid",
    "series_description",
    "modality",
    "instances",
    "series_number",
    "contrast_bolus_agent",
    "mr_acquisition_type",
    "slice_thickness_mm",
    "passed",
    "reasons",
)


class ReceivedStudySerializer(serializers.ModelSerializer):
    series = serializers.SerializerMethodField()

    class Meta:
        model = ReceivedStudy
        fields = [
            "id",
            "channel",
            "sender_ae_title",
            "sender_host",
            "study_instance_uid",
            "study_date",
            "clinical_trial",
            "series",
            "state",
            "reason",
            "decision",
            "trial",
            "patient",
            "timepoint",
            "imaging_series",
            "proposed_visit_label",
            "received_at",
            "resolved_by",
            "resolved_at",
        ]
        read_only_fields = fields

    def get_series(self, obj: ReceivedStudy) -> list[dict[str, Any]]:
        return [{k: row.get(k) for k in SERIES_KEYS if k in row} for row in obj.series]


class AssignSerializer(serializers.Serializer):
    timepoint = serializers.IntegerField(required=False, help_text="The visit the study belongs to.")
    patient = serializers.IntegerField(
        required=False, help_text="With visit_label: a new visit of this patient."
    )
    visit_label = serializers.CharField(required=False, max_length=32, allow_blank=True)
    scan_date = serializers.DateField(required=False, help_text="Of the new visit (default: the study date).")
    series_instance_uid = serializers.CharField(required=False, allow_blank=True, max_length=64)
    remember_patient_id = serializers.BooleanField(default=False)
    reason = serializers.CharField(required=False, allow_blank=True)


class DiscardSerializer(serializers.Serializer):
    reason = serializers.CharField()


class ReceivedStudyViewSet(viewsets.ReadOnlyModelViewSet):
    """Received studies (the PACS inbox); ``assign`` and ``discard`` resolve a pending one."""

    serializer_class = ReceivedStudySerializer
    permission_classes = [IsAuthenticated]

    def get_queryset(self) -> QuerySet[ReceivedStudy]:
        items = visible_received_studies(self.request.user)
        state = self.request.query_params.get("state")
        return items.filter(state=state) if state else items

    def _target(self, data: dict[str, Any]) -> tuple[Timepoint | None, Patient | None]:
        trials = visible_trial_ids(self.request.user)
        if data.get("timepoint"):
            timepoint = Timepoint.objects.select_related("patient__trial").filter(
                pk=data["timepoint"], patient__trial__in=trials
            )
            found = timepoint.first()
            if found is None:
                raise serializers.ValidationError({"timepoint": ["No such visit."]})
            return found, found.patient
        if data.get("patient") and data.get("visit_label"):
            patient = (
                Patient.objects.select_related("trial").filter(pk=data["patient"], trial__in=trials).first()
            )
            if patient is None:
                raise serializers.ValidationError({"patient": ["No such patient."]})
            return None, patient
        raise serializers.ValidationError(
            {"timepoint": ["Give a visit, or a patient and a new visit label."]}
        )

    @extend_schema(request=AssignSerializer, responses=ReceivedStudySerializer)
    @action(detail=True, methods=["post"])
    def assign(self, request: Request, pk: str | None = None) -> Response:
        """Store a pending study for a visit (an existing one or a new unscheduled one); audited."""
        item = self.get_object()
        form = AssignSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        data = form.validated_data
        timepoint, patient = self._target(data)
        assert patient is not None
        if not has_capability(request.user, patient.trial, MANAGE_PATIENTS):
            raise PermissionDenied("Your role in this trial does not allow assigning studies.")
        resolved = assign_received_study(
            item,
            timepoint=timepoint,
            patient=patient,
            visit_label=data.get("visit_label", ""),
            scan_date=data.get("scan_date"),
            series_uid=data.get("series_instance_uid", ""),
            remember_patient_id=data["remember_patient_id"],
            actor=request.user,
            reason=data.get("reason", ""),
        )
        return Response(ReceivedStudySerializer(resolved).data)

    @extend_schema(request=DiscardSerializer, responses=ReceivedStudySerializer)
    @action(detail=True, methods=["post"])
    def discard(self, request: Request, pk: str | None = None) -> Response:
        """Drop a pending study (its instances are deleted; the row and the audit event stay)."""
        item = self.get_object()
        form = DiscardSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        if item.trial is not None and not has_capability(request.user, item.trial, MANAGE_PATIENTS):
            raise PermissionDenied("Your role in this trial does not allow discarding studies.")
        resolved = discard_received_study(item, actor=request.user, reason=form.validated_data["reason"])
        return Response(ReceivedStudySerializer(resolved).data)


class PacsDeliverySerializer(serializers.ModelSerializer):
    destination_name = serializers.CharField(source="destination.name", read_only=True)
    protocol = serializers.CharField(source="destination.protocol", read_only=True)

    class Meta:
        model = PacsDelivery
        fields = [
            "id",
            "destination",
            "destination_name",
            "protocol",
            "timepoint",
            "segmentation_run",
            "sent_objects",
            "state",
            "attempts",
            "last_error",
            "created_at",
            "updated_at",
            "delivered_at",
        ]
        read_only_fields = fields


class PacsDeliveryViewSet(ReadOnlyViewSet):
    """Sends of results (SEG, RTSTRUCT) to the trials' PACS destinations; ``?timepoint=`` for one visit."""

    queryset = PacsDelivery.objects.select_related("destination")
    serializer_class = PacsDeliverySerializer
    trial_path = "timepoint__patient__trial"
    filterset_fields = ["timepoint", "state", "destination"]
    ordering_fields = ["created_at"]


class SubjectMappingSerializer(serializers.Serializer):
    patient_id = serializers.CharField(
        max_length=64, write_only=True, help_text="The site's Patient ID (stored only as a keyed hash)."
    )


class SubjectMappingView(APIView):
    """``POST /api/v1/patients/{id}/subject-mapping/``: map the site's Patient ID to this subject.

    Data managers of the trial (``manage_patients``); later studies carrying that Patient ID are routed to
    the patient without the inbox. Only an HMAC of the ID is stored; the answer never repeats it.
    """

    permission_classes = [IsAuthenticated]

    @extend_schema(request=SubjectMappingSerializer, responses={201: None})
    def post(self, request: Request, pk: int) -> Response:
        patient = (
            Patient.objects.select_related("trial", "site")
            .filter(pk=pk, trial__in=visible_trial_ids(request.user))
            .first()
        )
        if patient is None:
            raise NotFound("No such patient.")
        if not has_capability(request.user, patient.trial, MANAGE_PATIENTS):
            raise PermissionDenied("Your role in this trial does not allow mapping Patient IDs.")
        form = SubjectMappingSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        mapping = map_subject(patient, form.validated_data["patient_id"], actor=request.user)
        return Response({"patient": patient.pk, "site": mapping.site_id}, status=201)
