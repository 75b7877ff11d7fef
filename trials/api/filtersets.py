"""django-filter FilterSets of the REST API list endpoints (``?trial=1&subject_id=...``).

Every list of objects that belong to a patient answers ``?patient=`` (id) and ``?subject_id=``
(case-insensitive exact). Boolean filters accept ``true``/``false``, ``1``/``0``, ``yes``/``no`` (any case)
and answer 400 for anything else. The viewsets answer 400 for a query parameter that is neither a filter
nor ``page``, ``page_size``, ``ordering`` or ``format`` (:func:`unknown_query_parameters`), so a typo never
looks like "every row".
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from typing import Any

import django_filters as filters
from django import forms
from django.db import models
from django_filters.fields import IsoDateTimeField

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
    TrainingSet,
    Trial,
    TrialMembership,
    TrialModel,
)

_TRUE = frozenset({"true", "1", "yes"})
_FALSE = frozenset({"false", "0", "no"})


class StrictBooleanField(forms.Field):
    """A boolean query parameter: true/false, 1/0, yes/no (any case); empty means "not filtered"."""

    default_error_messages = {"invalid": "Use true or false (or 1/0, yes/no), not %(value)s."}

    def to_python(self, value: Any) -> bool | None:
        if value is None or isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text == "":
            return None
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
        raise forms.ValidationError(self.error_messages["invalid"], code="invalid", params={"value": value})


class StrictBooleanFilter(filters.BooleanFilter):
    """``BooleanFilter`` whose values are parsed by :class:`StrictBooleanField` (unknown value: 400)."""

    field_class = StrictBooleanField


#: Largest value of a PostgreSQL bigint (every primary key and object id column).
MAX_ID = 2**63 - 1


class IdFilter(filters.NumberFilter):
    """An id (``?trial=``, ``?object_id=``): a whole number from 1 to the bigint maximum, else 400.

    A plain NumberFilter passed ``99999999999999999999`` or ``1e400`` on to PostgreSQL, which failed
    the query (a 500).
    """

    field_class = forms.IntegerField

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("min_value", 1)
        kwargs.setdefault("max_value", MAX_ID)
        super().__init__(*args, **kwargs)


class BoundedIsoDateTimeField(IsoDateTimeField):
    """An ISO 8601 date-time whose UTC offset PostgreSQL can store (at most 15:59 either way) and
    whose UTC value is a representable date; anything else is a 400, not a failed query."""

    default_error_messages = {
        "offset": "The UTC offset must be between -15:59 and +15:59.",
        "range": "The date-time is out of range once converted to UTC.",
    }

    def to_python(self, value: Any) -> dt.datetime | None:
        parsed = super().to_python(value)
        if parsed is None:
            return None
        offset = parsed.utcoffset()
        if offset is not None:
            if abs(offset) >= dt.timedelta(hours=16):
                raise forms.ValidationError(self.error_messages["offset"], code="offset")
            try:
                parsed = parsed.astimezone(dt.UTC)
            except OverflowError:
                raise forms.ValidationError(self.error_messages["range"], code="range") from None
        return parsed


class BoundedIsoDateTimeFilter(filters.IsoDateTimeFilter):
    """``IsoDateTimeFilter`` parsed by :class:`BoundedIsoDateTimeField`."""

    field_class = BoundedIsoDateTimeField


class StrictFilterSet(filters.FilterSet):
    """Base of the API's FilterSets: model boolean fields get :class:`StrictBooleanFilter`, integer
    columns :class:`IdFilter` (bounded to bigint)."""

    FILTER_DEFAULTS = {
        **filters.FilterSet.FILTER_DEFAULTS,
        models.BooleanField: {"filter_class": StrictBooleanFilter},
        models.PositiveBigIntegerField: {"filter_class": IdFilter},
        models.BigIntegerField: {"filter_class": IdFilter},
    }


def unknown_query_parameters(
    filterset_class: type[filters.FilterSet], params: Iterable[str], allowed: Iterable[str]
) -> list[str]:
    """The names in ``params`` that are neither a filter of ``filterset_class`` nor in ``allowed``."""
    known = set(filterset_class.base_filters) | set(allowed)
    return sorted(name for name in set(params) if name not in known)


def subject_id_filter(patient_path: str) -> filters.CharFilter:
    """``?subject_id=`` (case-insensitive exact) on the patient at ``patient_path``."""
    return filters.CharFilter(field_name=f"{patient_path}__subject_id", lookup_expr="iexact")


class TrialFilterSet(StrictFilterSet):
    """Filter trials by code."""

    code = filters.CharFilter(lookup_expr="iexact")

    class Meta:
        model = Trial
        fields = ["code"]


class SiteFilterSet(StrictFilterSet):
    """Filter sites by trial and code."""

    class Meta:
        model = Site
        fields = ["trial", "code"]


class TrialMembershipFilterSet(StrictFilterSet):
    """Filter memberships by trial, user, role, site."""

    role = filters.ChoiceFilter(choices=MembershipRole.choices)

    class Meta:
        model = TrialMembership
        fields = ["trial", "user", "role", "site"]


class PatientFilterSet(StrictFilterSet):
    """Filter patients by trial, site, subject id."""

    subject_id = filters.CharFilter(lookup_expr="iexact")

    class Meta:
        model = Patient
        fields = ["trial", "site", "subject_id"]


class TimepointFilterSet(StrictFilterSet):
    """Filter visits by trial, patient, subject id, label, baseline, scan date range."""

    trial = IdFilter(field_name="patient__trial")
    subject_id = subject_id_filter("patient")
    scan_date_after = filters.DateFilter(field_name="scan_date", lookup_expr="gte")
    scan_date_before = filters.DateFilter(field_name="scan_date", lookup_expr="lte")

    class Meta:
        model = Timepoint
        fields = ["trial", "patient", "subject_id", "visit_label", "is_baseline"]


class ImagingSeriesFilterSet(StrictFilterSet):
    """Filter series by trial, patient, subject id, visit, UID."""

    trial = IdFilter(field_name="timepoint__patient__trial")
    patient = IdFilter(field_name="timepoint__patient")
    subject_id = subject_id_filter("timepoint__patient")

    class Meta:
        model = ImagingSeries
        fields = ["trial", "patient", "subject_id", "timepoint", "series_instance_uid", "study_instance_uid"]


class SegmentationRunFilterSet(StrictFilterSet):
    """Filter segmentation runs by trial, patient, subject id, visit, series, model, status and shadow."""

    trial = IdFilter(field_name="series__timepoint__patient__trial")
    patient = IdFilter(field_name="series__timepoint__patient")
    subject_id = subject_id_filter("series__timepoint__patient")
    timepoint = IdFilter(field_name="series__timepoint")

    class Meta:
        model = SegmentationRun
        fields = [
            "trial",
            "patient",
            "subject_id",
            "timepoint",
            "series",
            "model_version",
            "status",
            "is_shadow",
        ]


class ModelVersionFilterSet(StrictFilterSet):
    """Filter model versions by name and flags."""

    class Meta:
        model = ModelVersion
        fields = ["name", "is_active", "is_demo", "weights_sha256", "config_sha256", "lifecycle"]


class TrialModelFilterSet(StrictFilterSet):
    """Filter a trial's models by trial, model version and status."""

    trial = IdFilter(field_name="trial")
    model_version = IdFilter(field_name="model_version")

    class Meta:
        model = TrialModel
        fields = ["trial", "model_version", "status"]


class TrainingSetFilterSet(StrictFilterSet):
    """Filter training sets by trial."""

    trial = IdFilter(field_name="trial")

    class Meta:
        model = TrainingSet
        fields = ["trial"]


class LesionFilterSet(StrictFilterSet):
    """Filter lesions by trial, patient, subject id, label, role."""

    trial = IdFilter(field_name="patient__trial")
    subject_id = subject_id_filter("patient")
    role = filters.ChoiceFilter(choices=LesionRole.choices)

    class Meta:
        model = Lesion
        fields = ["trial", "patient", "subject_id", "label", "role", "is_false_positive"]


class LesionObservationFilterSet(StrictFilterSet):
    """Filter observations by trial, patient, subject id, lesion, visit, source."""

    trial = IdFilter(field_name="lesion__patient__trial")
    patient = IdFilter(field_name="lesion__patient")
    subject_id = subject_id_filter("lesion__patient")
    source = filters.ChoiceFilter(choices=ObservationSource.choices)

    class Meta:
        model = LesionObservation
        fields = ["trial", "patient", "subject_id", "lesion", "timepoint", "source", "present", "measurable"]


class AssessmentFilterSet(StrictFilterSet):
    """Filter assessments by trial, patient, subject id, visit, criteria, status, response, current."""

    trial = IdFilter(field_name="timepoint__patient__trial")
    patient = IdFilter(field_name="timepoint__patient")
    subject_id = subject_id_filter("timepoint__patient")
    criteria = filters.ChoiceFilter(choices=Criteria.choices)
    status = filters.ChoiceFilter(choices=AssessmentStatus.choices)
    overall_response = filters.ChoiceFilter(choices=ResponseChoices.choices)

    class Meta:
        model = Assessment
        fields = [
            "trial",
            "patient",
            "subject_id",
            "timepoint",
            "criteria",
            "status",
            "overall_response",
            "is_current",
        ]


class AuditEventFilterSet(StrictFilterSet):
    """Filter audit events by trial, object, action, actor, correlation id, time range."""

    created_after = BoundedIsoDateTimeFilter(field_name="created_at", lookup_expr="gte")
    created_before = BoundedIsoDateTimeFilter(field_name="created_at", lookup_expr="lte")

    class Meta:
        model = AuditEvent
        fields = ["trial", "object_type", "object_id", "action", "actor", "correlation_id"]


class ProcessingJobFilterSet(StrictFilterSet):
    """Filter jobs by trial, kind, state, object."""

    kind = filters.ChoiceFilter(choices=JobKind.choices)
    state = filters.ChoiceFilter(choices=JobState.choices)

    class Meta:
        model = ProcessingJob
        fields = ["trial", "kind", "state", "object_id", "correlation_id"]
