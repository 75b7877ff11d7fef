"""Serializers of the REST API. Writes call actions (``trials.actions``, audited); reads are plain.

Related objects are accepted as primary keys, looked up only among the trials the requesting user can
see, so an id from another trial is rejected as "does not exist" (400) without revealing anything.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from django.contrib.auth import get_user_model
from django.db import models
from rest_framework import serializers
from rest_framework.reverse import reverse

from trials.actions import lesions, patients
from trials.actions import trials as trial_actions
from trials.choices import ObservationSource, ResponseChoices, SignatureMeaning
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
from trials.permissions import visible_trial_ids
from trials.storage import RUN_FILE_KINDS, run_file_path
from trials.validators import FREE_TEXT_MAX_CHARS


class TrialScopedPrimaryKeyField(serializers.PrimaryKeyRelatedField):
    """Primary-key field limited to objects of the trials the requesting user can see.

    Args:
        trial_path: lookup from the related model to its trial id, e.g. ``"patient__trial"``.
    """

    def __init__(self, *, trial_path: str, **kwargs: Any) -> None:
        self.trial_path = trial_path
        super().__init__(**kwargs)

    def get_queryset(self) -> models.QuerySet[Any]:
        queryset = super().get_queryset()
        assert queryset is not None, "a TrialScopedPrimaryKeyField is declared with its queryset"
        request = self.context.get("request")
        user = getattr(request, "user", None)
        return queryset.filter(**{f"{self.trial_path}__in": visible_trial_ids(user)})


def audit_kwargs(context: Mapping[str, Any], reason: str = "") -> dict[str, Any]:
    """Actor, reason and correlation id of the current request, for an action."""
    request = context.get("request")
    user = getattr(request, "user", None)
    return {
        "actor": user if getattr(user, "is_authenticated", False) else None,
        "reason": reason,
        "correlation_id": getattr(request, "correlation_id", "") or "",
    }


class StrictInputMixin:
    """Refuse input a serializer would silently drop: unknown fields, and read-only fields sent with a
    value other than the object's own (so a client can send back what it read, but a change it cannot
    make is a 400 naming the field, never a 200 that changed nothing)."""

    def to_internal_value(self, data: Any) -> Any:
        if hasattr(data, "keys"):
            errors: dict[str, list[str]] = {}
            fields = self.fields  # type: ignore[attr-defined]
            instance = getattr(self, "instance", None)
            for name in data:
                field = fields.get(name)
                if field is None:
                    errors[name] = ["Unknown field."]
                elif field.read_only and not self._same_as_stored(field, instance, data[name]):
                    errors[name] = ["This field cannot be set here (read-only)."]
            if errors:
                raise serializers.ValidationError(errors)
        return super().to_internal_value(data)  # type: ignore[misc]

    @staticmethod
    def _same_as_stored(field: serializers.Field, instance: Any, value: Any) -> bool:
        if instance is None or isinstance(instance, list | models.QuerySet):
            return False
        try:
            stored = field.to_representation(field.get_attribute(instance))
        except Exception:  # noqa: BLE001 - a value that cannot be compared is not the stored one
            return False
        return stored == value or str(stored) == str(value)


class ActionModelSerializer(StrictInputMixin, serializers.ModelSerializer):
    """ModelSerializer whose create/update call actions instead of saving directly.

    Subclasses set ``create_action(validated_data, **audit)`` and ``update_action(instance, **audit,
    **changes)``, and list in ``Meta.create_only_fields`` what cannot change after creation.
    """

    reason = serializers.CharField(
        write_only=True,
        required=False,
        allow_blank=True,
        max_length=2000,
        help_text="Why (audit trail); required for a change (PATCH).",
    )

    create_action: Callable[..., Any] | None = None
    update_action: Callable[..., Any] | None = None

    def get_fields(self) -> dict[str, serializers.Field]:
        fields = super().get_fields()
        if self.instance is not None and not isinstance(self.instance, list | models.QuerySet):
            for name in getattr(self.Meta, "create_only_fields", ()):
                if name in fields:
                    fields[name].read_only = True
        return fields

    def get_validators(self) -> list[Any]:
        # Uniqueness is decided by the actions (database constraints, race-free) -> 409 with a clear
        # message; DRF's pre-checks would duplicate them with a different wording and status.
        return []

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        attrs = super().validate(attrs)
        updating = self.instance is not None and not isinstance(self.instance, list | models.QuerySet)
        if updating and not (attrs.get("reason") or "").strip():
            # Every human change records why (audit trail); a creation's why is the record itself.
            raise serializers.ValidationError(
                {"reason": ["Say why: a change needs a reason for the audit trail."]}
            )
        return attrs

    def create(self, validated_data: dict[str, Any]) -> Any:
        reason = validated_data.pop("reason", "")
        assert self.create_action is not None, f"{type(self).__name__} is read-only"
        return type(self).create_action(validated_data, **audit_kwargs(self.context, reason))  # type: ignore[misc]

    def update(self, instance: Any, validated_data: dict[str, Any]) -> Any:
        reason = validated_data.pop("reason", "")
        assert self.update_action is not None, f"{type(self).__name__} is read-only"
        return type(self).update_action(instance, **audit_kwargs(self.context, reason), **validated_data)  # type: ignore[misc]


# ----------------------------------------------------------------------------------------- trials


def _create_trial(data: dict[str, Any], **audit: Any) -> Trial:
    return trial_actions.create_trial(**data, **audit)


class TrialSerializer(ActionModelSerializer):
    """A trial and its response-criteria settings (rano-bm.md section 9)."""

    create_action = staticmethod(_create_trial)

    def update(self, instance: Trial, validated_data: dict[str, Any]) -> Trial:
        """``trials.update_trial``: a change of the criteria settings queues a re-assessment of every
        patient, kept as ``queued_job`` for the response."""
        reason = validated_data.pop("reason", "")
        result = trial_actions.update_trial(instance, **audit_kwargs(self.context, reason), **validated_data)
        self.queued_job = result.reassessment_job
        return result.trial

    class Meta:
        model = Trial
        fields = [
            "id",
            "code",
            "title",
            "description",
            "is_demo",
            "created_at",
            *Trial.CRITERIA_SETTING_FIELDS,
            "reason",
        ]
        read_only_fields = ["id", "created_at"]
        create_only_fields = ["code", "is_demo"]


def _create_site(data: dict[str, Any], **audit: Any) -> Site:
    return trial_actions.create_site(data.pop("trial"), **data, **audit)


class SiteSerializer(ActionModelSerializer):
    """A site of a trial."""

    trial = TrialScopedPrimaryKeyField(queryset=Trial.objects.all(), trial_path="pk")
    create_action = staticmethod(_create_site)
    update_action = staticmethod(trial_actions.update_site)

    class Meta:
        model = Site
        fields = ["id", "trial", "code", "name", "created_at", "reason"]
        read_only_fields = ["id", "created_at"]
        create_only_fields = ["trial"]


def _add_membership(data: dict[str, Any], **audit: Any) -> TrialMembership:
    return trial_actions.add_membership(data.pop("trial"), **data, **audit)


class TrialMembershipSerializer(ActionModelSerializer):
    """A user's role in a trial."""

    trial = TrialScopedPrimaryKeyField(queryset=Trial.objects.all(), trial_path="pk")
    user = serializers.PrimaryKeyRelatedField(queryset=get_user_model().objects.filter(is_active=True))
    site = TrialScopedPrimaryKeyField(
        queryset=Site.objects.all(), trial_path="trial", required=False, allow_null=True
    )
    username = serializers.CharField(source="user.username", read_only=True)
    create_action = staticmethod(_add_membership)
    update_action = staticmethod(trial_actions.update_membership)

    class Meta:
        model = TrialMembership
        fields = ["id", "trial", "user", "username", "site", "role", "created_at", "reason"]
        read_only_fields = ["id", "created_at"]
        create_only_fields = ["trial", "user"]


# --------------------------------------------------------------------------------- patients, visits


def _create_patient(data: dict[str, Any], **audit: Any) -> Patient:
    return patients.create_patient(data.pop("trial"), **data, **audit)


class PatientSerializer(ActionModelSerializer):
    """A trial subject (pseudonymous subject id only)."""

    trial = TrialScopedPrimaryKeyField(queryset=Trial.objects.all(), trial_path="pk")
    site = TrialScopedPrimaryKeyField(queryset=Site.objects.all(), trial_path="trial")
    create_action = staticmethod(_create_patient)
    update_action = staticmethod(patients.update_patient)

    class Meta:
        model = Patient
        fields = [
            "id",
            "trial",
            "site",
            "subject_id",
            "enrolment_date",
            "treatment_start_date",
            "created_at",
            "reason",
        ]
        read_only_fields = ["id", "created_at"]
        create_only_fields = ["trial"]


def _create_timepoint(data: dict[str, Any], **audit: Any) -> Timepoint:
    return patients.create_timepoint(data.pop("patient"), **data, **audit)


class TimepointSerializer(ActionModelSerializer):
    """A visit of a patient."""

    patient = TrialScopedPrimaryKeyField(queryset=Patient.objects.all(), trial_path="trial")
    subject_id = serializers.CharField(source="patient.subject_id", read_only=True)
    trial = serializers.IntegerField(source="patient.trial_id", read_only=True)
    create_action = staticmethod(_create_timepoint)
    # The change, then re-assessment when it can alter a response.
    update_action = staticmethod(patients.edit_timepoint)

    class Meta:
        model = Timepoint
        fields = [
            "id",
            "patient",
            "subject_id",
            "trial",
            "visit_label",
            "scan_date",
            "is_baseline",
            "corticosteroid_status",
            "clinical_status",
            "notes",
            "created_at",
            "reason",
        ]
        read_only_fields = ["id", "created_at"]
        create_only_fields = ["patient"]


# ------------------------------------------------------------------------------------------ imaging


class ImagingSeriesSerializer(serializers.ModelSerializer):
    """An imaging series (read-only here: series arrive through upload or PACS)."""

    patient = serializers.IntegerField(source="timepoint.patient_id", read_only=True)
    volume_file = serializers.SerializerMethodField(
        help_text="Download URL of the stored volume (NIfTI; same trial access as the series), null when none."
    )

    class Meta:
        model = ImagingSeries
        fields = [
            "id",
            "timepoint",
            "patient",
            "study_instance_uid",
            "series_instance_uid",
            "modality",
            "series_description",
            "size_voxels",
            "spacing_mm",
            "origin_mm",
            "direction",
            "volume_file",
            "checksum_sha256",
            "source",
            "created_at",
        ]
        read_only_fields = fields

    def get_volume_file(self, series: ImagingSeries) -> str | None:
        """The authorised download URL of the volume (stored files are never served from a public URL)."""
        if not series.volume_file:
            return None
        url = reverse("api:series-volume", kwargs={"pk": series.pk})
        request = self.context.get("request")
        return request.build_absolute_uri(url) if request is not None else url


class ModelVersionSerializer(serializers.ModelSerializer):
    """A registered segmentation model."""

    class Meta:
        model = ModelVersion
        fields = [
            "id",
            "name",
            "version",
            "architecture",
            "config",
            "weights_sha256",
            "config_sha256",
            "training_provenance",
            "validation_metrics",
            "intended_use",
            "is_demo",
            "is_active",
            "lifecycle",
            "validated_at",
            "validation_summary",
            "validation_report_url",
            "not_for_clinical_use",
            "created_at",
        ]
        read_only_fields = fields

    validation_report_url = serializers.SerializerMethodField(
        help_text="Download of the validation report (HTML); null before validation."
    )
    not_for_clinical_use = serializers.BooleanField(
        source="is_demo", read_only=True, help_text="Demo weights: not for clinical use."
    )

    def get_validation_report_url(self, version: ModelVersion) -> str | None:
        if not version.validation_report:
            return None
        url = reverse("api:modelversion-report", kwargs={"pk": version.pk})
        request = self.context.get("request")
        return request.build_absolute_uri(url) if request is not None else url


class TrialModelSerializer(serializers.ModelSerializer):
    """A model version in one trial: a shadow candidate (not approved), approved for use (signed), active
    (the pipeline runs it) or retired."""

    model_name = serializers.CharField(source="model_version.name", read_only=True)
    model_version_label = serializers.CharField(source="model_version.version", read_only=True)
    not_for_clinical_use = serializers.BooleanField(source="model_version.is_demo", read_only=True)

    class Meta:
        model = TrialModel
        fields = [
            "id",
            "trial",
            "model_version",
            "model_name",
            "model_version_label",
            "not_for_clinical_use",
            "status",
            "approved_by",
            "approved_by_name",
            "approved_at",
            "signature_meaning",
            "reason",
            "activated_at",
            "retired_at",
            "shadow_started_at",
            "shadow_stopped_at",
            "created_at",
        ]
        read_only_fields = fields


class ShadowModelSerializer(StrictInputMixin, serializers.Serializer):
    """Input of ``POST /trial-models/shadow/``: put a registered or validated version in shadow."""

    trial = TrialScopedPrimaryKeyField(trial_path="pk", queryset=Trial.objects.all())
    model_version = serializers.PrimaryKeyRelatedField(queryset=ModelVersion.objects.all())
    reason = serializers.CharField(max_length=2000, help_text="Required: why this candidate runs in shadow.")


class ApproveModelSerializer(StrictInputMixin, serializers.Serializer):
    """Input of ``POST /trial-models/approve/``; the signature means "approved for use"."""

    trial = TrialScopedPrimaryKeyField(trial_path="pk", queryset=Trial.objects.all())
    model_version = serializers.PrimaryKeyRelatedField(queryset=ModelVersion.objects.all())
    password = serializers.CharField(
        write_only=True,
        trim_whitespace=False,
        help_text="The signer's password, entered again: it applies the electronic signature.",
    )
    reason = serializers.CharField(max_length=2000, help_text="Required: why this model is approved.")


class ValidateModelSerializer(StrictInputMixin, serializers.Serializer):
    """Input of ``POST /model-versions/{id}/validate/``: the trial whose signed visits are the reference."""

    trial = TrialScopedPrimaryKeyField(trial_path="pk", queryset=Trial.objects.all())


class ModelChangeSerializer(StrictInputMixin, serializers.Serializer):
    """Input of ``POST /trial-models/{id}/activate/``, ``.../retire/`` and ``.../stop-shadow/``."""

    reason = serializers.CharField(max_length=2000, help_text="Required: why (audit trail).")


class TrainingSetSerializer(serializers.ModelSerializer):
    """A trial's signed reads exported as a training set (files in the layout ``bm-train --data`` reads)."""

    download_url = serializers.SerializerMethodField()

    class Meta:
        model = TrainingSet
        fields = [
            "id",
            "trial",
            "n_cases",
            "manifest_sha256",
            "training_patients",
            "held_out_patients",
            "manifest",
            "created_by_name",
            "created_at",
            "download_url",
        ]
        read_only_fields = fields

    def get_download_url(self, obj: TrainingSet) -> str:
        return reverse("api:trainingset-download", args=[obj.pk], request=self.context.get("request"))


class ExportTrainingSetSerializer(StrictInputMixin, serializers.Serializer):
    """Input of ``POST /training-sets/``: the trial and the patients held out (those of a validation set)."""

    trial = TrialScopedPrimaryKeyField(trial_path="pk", queryset=Trial.objects.all())
    hold_out = serializers.ListField(
        child=serializers.CharField(max_length=64), required=False, default=list,
        help_text="Subject ids held out of the training set (e.g. the patients of a validation set).",
    )  # fmt: skip
    hold_out_fraction = serializers.FloatField(
        required=False, default=0.0, min_value=0.0, max_value=0.99,
        help_text="Also hold out this share of the patients (deterministic: sha256 of trial code and subject).",
    )  # fmt: skip


class FineTuneSerializer(StrictInputMixin, serializers.Serializer):
    """Input of ``POST /training-sets/{id}/fine-tune/``."""

    method = serializers.ChoiceField(
        choices=[("paper", "paper: active model's weights, encoder frozen, BCE"), ("full", "full training")],
        default="paper",
    )
    epochs = serializers.IntegerField(min_value=1, max_value=1000, default=20)
    steps_per_epoch = serializers.IntegerField(min_value=1, max_value=10000, default=50)
    batch_size = serializers.IntegerField(min_value=1, max_value=64, default=2)
    seed = serializers.IntegerField(min_value=0, default=0)


class SegmentationRunSerializer(serializers.ModelSerializer):
    """A segmentation run (read-only). ``files`` links the stored outputs: ``mask`` (component labels,
    NIfTI), ``lesions`` (lesion numbers on the series grid, NIfTI), ``rtstruct`` and ``seg`` (DICOM, for
    DICOM uploads); a file not (yet) written is absent. A shadow run (``is_shadow``: a trial's shadow
    candidate, for comparison only, never the visit's result) has a ``mask`` and its ``lesion_table``.
    ``findings``: the labels of the mask that a stage after the network added (the small-lesion stage),
    with what it measured on each."""

    model_name = serializers.CharField(source="model_version.name", read_only=True)
    is_demo_model = serializers.BooleanField(source="model_version.is_demo", read_only=True)
    files = serializers.SerializerMethodField()

    class Meta:
        model = SegmentationRun
        fields = [
            "id",
            "series",
            "model_version",
            "model_name",
            "is_demo_model",
            "model_weights_sha256",
            "device",
            "status",
            "timings_s",
            "started_at",
            "finished_at",
            "files",
            "error",
            "is_shadow",
            "lesion_table",
            "findings",
            "created_at",
        ]
        read_only_fields = fields

    def get_files(self, run: SegmentationRun) -> dict[str, str]:
        request = self.context.get("request")
        out = {}
        # the SR of the visit's measurements is made from the SEG on request
        kinds = [kind for kind in RUN_FILE_KINDS if run_file_path(run, kind) is not None]
        for kind in [*kinds, "sr"] if "seg" in kinds else kinds:
            url = reverse("api:segmentationrun-file", kwargs={"pk": run.pk, "kind": kind})
            out[kind] = request.build_absolute_uri(url) if request is not None else url
        return out


# ------------------------------------------------------------------------------------------ lesions


def _create_lesion(data: dict[str, Any], **audit: Any) -> Lesion:
    return lesions.add_lesion(data.pop("patient"), **data, **audit)


class LesionSerializer(ActionModelSerializer):
    """A lesion with its stable label, role and reader flags."""

    patient = TrialScopedPrimaryKeyField(queryset=Patient.objects.all(), trial_path="trial")
    first_seen_timepoint = TrialScopedPrimaryKeyField(
        queryset=Timepoint.objects.all(), trial_path="patient__trial", required=False, allow_null=True
    )
    # A field named like a Field attribute: the stubs see the class attribute, DRF declares a field.
    label = serializers.CharField(  # type: ignore[assignment]
        max_length=16, required=False, help_text="Default: next free L<n>."
    )
    create_action = staticmethod(_create_lesion)
    update_action = staticmethod(lesions.edit_lesion)

    class Meta:
        model = Lesion
        fields = [
            "id",
            "patient",
            "label",
            "role",
            "role_set_by_reader",
            "first_seen_timepoint",
            "is_cystic",
            "is_dural",
            "is_bony",
            "is_leptomeningeal",
            "previously_irradiated",
            "progressing_since_treatment",
            "too_small_to_measure",
            "is_false_positive",
            "notes",
            "created_at",
            "reason",
        ]
        read_only_fields = ["id", "role_set_by_reader", "created_at"]
        create_only_fields = ["patient", "label"]


def _record_observation(data: dict[str, Any], **audit: Any) -> LesionObservation:
    # The reader's observation, then re-assessment of the patient.
    return lesions.add_observation(data.pop("lesion"), data.pop("timepoint"), **data, **audit)


class ReaderSourceField(serializers.ChoiceField):
    """An observation's source: every value is shown (``ai`` included), a client may send only the
    reader's values. The OpenAPI schema says the same per direction (``trials.api.schema``)."""

    #: Values a client may send.
    WRITABLE = (ObservationSource.MANUAL, ObservationSource.EDITED)

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(choices=ObservationSource.choices, **kwargs)

    def to_internal_value(self, data: Any) -> Any:
        value = super().to_internal_value(data)
        if value not in self.WRITABLE:
            self.fail("invalid_choice", input=data)
        return value


class PointsField(serializers.JSONField):
    """Two physical points ``[[x, y, z], [x, y, z]]`` in mm (validated by the row helper)."""


class LesionObservationSerializer(ActionModelSerializer):
    """A lesion at a visit with its measurements (physical mm)."""

    lesion = TrialScopedPrimaryKeyField(queryset=Lesion.objects.all(), trial_path="patient__trial")
    timepoint = TrialScopedPrimaryKeyField(queryset=Timepoint.objects.all(), trial_path="patient__trial")
    segmentation_run = TrialScopedPrimaryKeyField(
        queryset=SegmentationRun.objects.all(),
        trial_path="series__timepoint__patient__trial",
        required=False,
        allow_null=True,
    )
    lesion_label = serializers.CharField(source="lesion.label", read_only=True)
    # Only the pipeline records "ai": a reader's observation is manual, an edited AI one edited (the
    # action sets it either way; "ai" is refused, so a reader's number is never shown as the AI's).
    source = ReaderSourceField(  # type: ignore[assignment]  # a field, not Field.source (see label)
        required=False,
        help_text="Set by the service: ai (the pipeline's), manual (added by a reader) or edited (an AI "
        "observation a reader changed); a client may send manual or edited only.",
    )
    merged_into: serializers.SlugRelatedField[Lesion] = serializers.SlugRelatedField(
        slug_field="label",
        read_only=True,
        allow_null=True,
        help_text="Label of the lesion whose mass absorbed this one here (null when none).",
    )
    caliper_points_mm = PointsField(required=False, allow_null=True)
    perpendicular_points_mm = PointsField(required=False, allow_null=True)
    create_action = staticmethod(_record_observation)
    update_action = staticmethod(lesions.edit_observation)

    class Meta:
        model = LesionObservation
        # The measurement fields are the model's writable list, so API and actions cannot drift apart.
        fields = [
            "id",
            "lesion",
            "lesion_label",
            "timepoint",
            *LesionObservation.WRITABLE_FIELDS,
            "created_at",
            "updated_at",
            "reason",
        ]
        read_only_fields = ["id", "created_at", "updated_at"]
        create_only_fields = ["lesion", "timepoint"]


# -------------------------------------------------------------------------------------- assessments


class AssessmentSerializer(serializers.ModelSerializer):
    """An assessment (read-only; changed through the confirm and override verbs)."""

    signed_by_name = serializers.CharField(
        source="signed_by.username", read_only=True, default=None, allow_null=True
    )
    # Blank ("") where there is no response: at the baseline, or before the engine has run. Declared so
    # that the OpenAPI schema lists "" beside the response categories (read-only model fields lose it).
    target_response = serializers.ChoiceField(ResponseChoices.choices, allow_blank=True, read_only=True)
    non_target_response = serializers.ChoiceField(ResponseChoices.choices, allow_blank=True, read_only=True)
    overall_response = serializers.ChoiceField(
        ResponseChoices.choices, allow_blank=True, read_only=True, help_text="Blank at baseline."
    )
    volumetric_response = serializers.ChoiceField(ResponseChoices.choices, allow_blank=True, read_only=True)
    best_overall_response = serializers.ChoiceField(
        ResponseChoices.choices, allow_blank=True, read_only=True, help_text="BOR up to this visit."
    )
    signature_meaning = serializers.ChoiceField(
        SignatureMeaning.choices, allow_blank=True, read_only=True, help_text="Blank until signed."
    )

    class Meta:
        model = Assessment
        fields = [
            "id",
            "timepoint",
            "criteria",
            "source",
            "model_version",
            "sum_ld_mm",
            "baseline_sum_ld_mm",
            "nadir_sum_ld_mm",
            "sum_volume_mm3",
            "baseline_sum_volume_mm3",
            "nadir_sum_volume_mm3",
            "pct_change_from_baseline",
            "pct_change_from_nadir",
            "nadir_timepoint",
            "target_response",
            "non_target_response",
            "new_lesion_status",
            "overall_response",
            "volumetric_response",
            "confirmed",
            "best_overall_response",
            "progression_date",
            "reasons",
            "settings",
            "engine_version",
            "status",
            "signed_by",
            "signed_by_name",
            "signed_at",
            "signature_meaning",
            "comment",
            "supersedes",
            "is_current",
            "created_at",
        ]
        read_only_fields = fields


#: The re-entered password that signs a confirm or an override (21 CFR Part 11 re-authentication).
_SIGNATURE_PASSWORD_HELP = "The signer's password, entered again: it applies the electronic signature."


class ConfirmAssessmentSerializer(StrictInputMixin, serializers.Serializer):
    """Input of ``POST /assessments/{id}/confirm/``; the signature means "reviewed and confirmed"."""

    password = serializers.CharField(
        write_only=True, trim_whitespace=False, help_text=_SIGNATURE_PASSWORD_HELP
    )
    reason = serializers.CharField(required=False, allow_blank=True, max_length=2000)


class RetryJobSerializer(StrictInputMixin, serializers.Serializer):
    """Input of ``POST /jobs/{id}/retry/``."""

    reason = serializers.CharField(max_length=2000, help_text="Required: why the job is run again.")


class OverrideAssessmentSerializer(StrictInputMixin, serializers.Serializer):
    """Input of ``POST /assessments/{id}/override/``; the signature means "reviewed and overridden"."""

    password = serializers.CharField(
        write_only=True, trim_whitespace=False, help_text=_SIGNATURE_PASSWORD_HELP
    )
    overall_response = serializers.ChoiceField(choices=ResponseChoices.choices)
    reason = serializers.CharField(max_length=2000, help_text="Required: why the reader disagrees.")
    target_response = serializers.ChoiceField(choices=ResponseChoices.choices, required=False)
    non_target_response = serializers.ChoiceField(choices=ResponseChoices.choices, required=False)
    comment = serializers.CharField(required=False, allow_blank=True, max_length=FREE_TEXT_MAX_CHARS)


# ----------------------------------------------------------------------------------- audit and jobs


class AuditEventSerializer(serializers.ModelSerializer):
    """An audit trail entry (read-only)."""

    class Meta:
        model = AuditEvent
        fields = [
            "id",
            "created_at",
            "actor",
            "actor_name",
            "action",
            "trial",
            "object_type",
            "object_id",
            "object_repr",
            "before",
            "after",
            "reason",
            "correlation_id",
        ]
        read_only_fields = fields


class ProcessingJobSerializer(serializers.ModelSerializer):
    """A background job shown as progress (read-only)."""

    object_type = serializers.SerializerMethodField()
    duration_s = serializers.FloatField(read_only=True, allow_null=True)

    class Meta:
        model = ProcessingJob
        fields = [
            "id",
            "kind",
            "trial",
            "object_type",
            "object_id",
            "params",
            "result",
            "celery_task_id",
            "state",
            "progress_pct",
            "stage",
            "message",
            "error",
            "attempts",
            "correlation_id",
            "time_limit_s",
            "enqueued_at",
            "started_at",
            "finished_at",
            "duration_s",
        ]
        read_only_fields = fields

    def get_object_type(self, job: ProcessingJob) -> str | None:
        """``app_label.model`` of the object the job works on."""
        content_type = job.content_type
        if content_type is None:
            return None
        return f"{content_type.app_label}.{content_type.model}"
