"""django-filter FilterSets of the REST API list endpoints (``?trial=1&subject_id=...``)."""

from __future__ import annotations

import django_filters as filters

from trials.choices import (
    AssessmentStatus,
    Criteria,
    JobKind,
    JobState,
    LesionRole,
    MembershipRole,
    ObservationSource,
    ResponseChoices,
)
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
    Trial,
    TrialMembership,
)


class TrialFilterSet(filters.FilterSet):
    """Filter trials by code."""

    code = filters.CharFilter(lookup_expr="iexact")

    class Meta:
        model = Trial
        fields = ["code"]


class SiteFilterSet(filters.FilterSet):
    """Filter sites by trial and code."""

    class Meta:
        model = Site
        fields = ["trial", "code"]


class TrialMembershipFilterSet(filters.FilterSet):
    """Filter memberships by trial, user, role, site."""

    role = filters.ChoiceFilter(choices=MembershipRole.choices)

    class Meta:
        model = TrialMembership
        fields = ["trial", "user", "role", "site"]


class PatientFilterSet(filters.FilterSet):
    """Filter patients by trial, site, subject id."""

    subject_id = filters.CharFilter(lookup_expr="iexact")

    class Meta:
        model = Patient
        fields = ["trial", "site", "subject_id"]


class TimepointFilterSet(filters.FilterSet):
    """Filter visits by trial, patient, label, baseline, scan date range."""

    trial = filters.NumberFilter(field_name="patient__trial")
    scan_date_after = filters.DateFilter(field_name="scan_date", lookup_expr="gte")
    scan_date_before = filters.DateFilter(field_name="scan_date", lookup_expr="lte")

    class Meta:
        model = Timepoint
        fields = ["trial", "patient", "visit_label", "is_baseline"]


class ImagingSeriesFilterSet(filters.FilterSet):
    """Filter series by trial, patient, visit, UID."""

    trial = filters.NumberFilter(field_name="timepoint__patient__trial")
    patient = filters.NumberFilter(field_name="timepoint__patient")

    class Meta:
        model = ImagingSeries
        fields = ["trial", "patient", "timepoint", "series_instance_uid", "study_instance_uid"]


class SegmentationRunFilterSet(filters.FilterSet):
    """Filter segmentation runs by trial, patient, visit, series, model and status."""

    trial = filters.NumberFilter(field_name="series__timepoint__patient__trial")
    patient = filters.NumberFilter(field_name="series__timepoint__patient")
    timepoint = filters.NumberFilter(field_name="series__timepoint")

    class Meta:
        model = SegmentationRun
        fields = ["trial", "patient", "timepoint", "series", "model_version", "status"]


class ModelVersionFilterSet(filters.FilterSet):
    """Filter model versions by name and flags."""

    class Meta:
        model = ModelVersion
        fields = ["name", "is_active", "is_demo", "weights_sha256"]


class LesionFilterSet(filters.FilterSet):
    """Filter lesions by trial, patient, label, role."""

    trial = filters.NumberFilter(field_name="patient__trial")
    role = filters.ChoiceFilter(choices=LesionRole.choices)

    class Meta:
        model = Lesion
        fields = ["trial", "patient", "label", "role", "is_false_positive"]


class LesionObservationFilterSet(filters.FilterSet):
    """Filter observations by trial, patient, lesion, visit, source."""

    trial = filters.NumberFilter(field_name="lesion__patient__trial")
    patient = filters.NumberFilter(field_name="lesion__patient")
    source = filters.ChoiceFilter(choices=ObservationSource.choices)

    class Meta:
        model = LesionObservation
        fields = ["trial", "patient", "lesion", "timepoint", "source", "present", "measurable"]


class AssessmentFilterSet(filters.FilterSet):
    """Filter assessments by trial, patient, visit, criteria, status, response, current."""

    trial = filters.NumberFilter(field_name="timepoint__patient__trial")
    patient = filters.NumberFilter(field_name="timepoint__patient")
    criteria = filters.ChoiceFilter(choices=Criteria.choices)
    status = filters.ChoiceFilter(choices=AssessmentStatus.choices)
    overall_response = filters.ChoiceFilter(choices=ResponseChoices.choices)

    class Meta:
        model = Assessment
        fields = ["trial", "patient", "timepoint", "criteria", "status", "overall_response", "is_current"]


class AuditEventFilterSet(filters.FilterSet):
    """Filter audit events by trial, object, action, actor, correlation id, time range."""

    created_after = filters.IsoDateTimeFilter(field_name="created_at", lookup_expr="gte")
    created_before = filters.IsoDateTimeFilter(field_name="created_at", lookup_expr="lte")

    class Meta:
        model = AuditEvent
        fields = ["trial", "object_type", "object_id", "action", "actor", "correlation_id"]


class ProcessingJobFilterSet(filters.FilterSet):
    """Filter jobs by trial, kind, state, object."""

    kind = filters.ChoiceFilter(choices=JobKind.choices)
    state = filters.ChoiceFilter(choices=JobState.choices)

    class Meta:
        model = ProcessingJob
        fields = ["trial", "kind", "state", "object_id", "correlation_id"]
