"""Streaming queries behind every export.

Each export reads a fixed handful of querysets, each ordered by ``(patient id, scan date, visit id)`` and
read with ``QuerySet.iterator()`` (a server-side cursor on PostgreSQL), and joins them in Python by walking
the sorted streams side by side. So an export runs the same number of SQL queries whatever the trial's size
and holds one visit's rows in memory at a time.

Per-visit values are read with SQL (``FilteredRelation`` joins for the current assessments, correlated
subqueries for the AI response, the visit number and the model version), never by per-row queries.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Iterator
from typing import Any, cast

from django.db.models import (
    CharField,
    Count,
    Exists,
    F,
    FilteredRelation,
    OuterRef,
    Q,
    Subquery,
    Value,
)
from django.db.models.functions import Coalesce, Concat

from trials.choices import Criteria, RunStatus
from trials.exports.filters import ExportFilters
from trials.models import (
    LesionObservation,
    Patient,
    SegmentationRun,
    Timepoint,
    Trial,
)
from trials.quality import ai_answer

#: Rows fetched per round trip of a server-side cursor.
CHUNK_SIZE = 2000

_ASSESSMENT_FIELDS = (
    "sum_ld_mm",
    "baseline_sum_ld_mm",
    "nadir_sum_ld_mm",
    "sum_volume_mm3",
    "baseline_sum_volume_mm3",
    "nadir_sum_volume_mm3",
    "pct_change_from_baseline",
    "pct_change_from_nadir",
    "target_response",
    "non_target_response",
    "new_lesion_status",
    "overall_response",
    "volumetric_response",
    "confirmed",
    "best_overall_response",
    "progression_date",
    "engine_version",
    "status",
    "source",
    "signed_at",
    "signature_meaning",
    "created_at",
    "settings",
)


def visit_number_subquery(ref: str = "") -> Subquery:
    """1-based position of a visit among its patient's visits by scan date (ties: record id).

    Counted over all the patient's visits, so filtering an export by date never renumbers visits.

    Args:
        ref: lookup path from the outer row to the timepoint (``""`` when the outer row is a timepoint).
    """
    path = f"{ref}__" if ref else ""
    earlier = (
        Timepoint.objects.filter(patient_id=OuterRef(f"{path}patient_id"))
        .filter(
            Q(scan_date__lt=OuterRef(f"{path}scan_date"))
            | Q(scan_date=OuterRef(f"{path}scan_date"), pk__lte=OuterRef(ref or "pk"))
        )
        .order_by()
        .values("patient_id")
        .annotate(n=Count("pk"))
        .values("n")
    )
    return Subquery(earlier)


def visits(trial: Trial, filters: ExportFilters) -> Iterator[dict[str, Any]]:
    """One dict per visit of the trial, with its patient, site, current assessments and provenance.

    Keys: the visit's own fields, ``subject_id``, ``site_code``, ``treatment_start_date``,
    ``enrolment_date``, ``visit_number``, ``ai_response``, ``model_version``, then ``rano_<field>`` and
    ``vol_<field>`` for the current RANO-BM and volumetric assessments (None when there is none) and
    ``rano_signed_by`` (user name of the signer).
    """
    model_version = (
        SegmentationRun.objects.filter(
            series__timepoint=OuterRef("pk"), status=RunStatus.SUCCEEDED, is_shadow=False
        )
        .order_by("-finished_at", "-pk")
        .annotate(
            label=Concat(
                "model_version__name", Value(" "), "model_version__version", output_field=CharField()
            )
        )
        .values("label")[:1]
    )
    assessment_values = {
        f"{prefix}_{name}": F(f"{prefix}__{name}")
        for prefix in ("rano", "vol")
        for name in _ASSESSMENT_FIELDS
    }
    queryset = (
        Timepoint.objects.filter(patient__trial=trial)
        .filter(filters.timepoint_q())
        .annotate(
            rano=FilteredRelation(
                "assessments",
                condition=Q(assessments__criteria=Criteria.RANO_BM, assessments__is_current=True),
            ),
            vol=FilteredRelation(
                "assessments",
                condition=Q(assessments__criteria=Criteria.VOLUMETRIC, assessments__is_current=True),
            ),
        )
        .annotate(
            rano_present=Coalesce(F("rano__pk"), Value(0)),
            ai_response=ai_answer("pk"),
            model_version=Subquery(model_version),
            visit_number=visit_number_subquery(),
        )
        .values(
            "pk",
            "patient_id",
            "visit_label",
            "scan_date",
            "is_baseline",
            "corticosteroid_status",
            "clinical_status",
            "rano_present",
            "ai_response",
            "model_version",
            "visit_number",
            subject_id=F("patient__subject_id"),
            site_code=F("patient__site__code"),
            treatment_start_date=F("patient__treatment_start_date"),
            enrolment_date=F("patient__enrolment_date"),
            rano_signed_by=F("rano__signed_by__username"),
            **assessment_values,
        )
        .order_by("patient_id", "scan_date", "pk")
    )
    # values() rows are dicts (django-stubs types them as TypedDicts of the selected fields).
    return cast(Iterator[dict[str, Any]], queryset.iterator(chunk_size=CHUNK_SIZE))


def observations(trial: Trial, filters: ExportFilters) -> Iterator[dict[str, Any]]:
    """One dict per lesion observation (false positives dropped by a reader are left out).

    Ordered like :func:`visits`, then by lesion record id. Keys: the observation's measurements plus
    ``patient_id``, ``scan_date``, ``timepoint_id``, ``label``, ``role``, the lesion's reader flags,
    ``first_seen_is_baseline`` (None when unknown), ``ever_split``, ``merged_into_label``,
    ``segmentation_run_id``, ``component_label`` and ``model_version``.
    """
    split = LesionObservation.objects.filter(lesion=OuterRef("lesion"), fragment_count__gt=1)
    queryset = (
        LesionObservation.objects.filter(timepoint__patient__trial=trial, lesion__is_false_positive=False)
        .filter(filters.timepoint_q("timepoint__"))
        .annotate(ever_split=Exists(split))
        .values(
            "timepoint_id",
            "lesion_id",
            "source",
            "present",
            "fragment_count",
            "longest_diameter_mm",
            "perpendicular_diameter_mm",
            "volume_mm3",
            "max_3d_diameter_mm",
            "slice_count",
            "measurable",
            "unequivocal_progression",
            "ever_split",
            "segmentation_run_id",
            "component_label",
            patient_id=F("timepoint__patient_id"),
            scan_date=F("timepoint__scan_date"),
            label=F("lesion__label"),
            merged_into_label=F("merged_into__label"),
            role=F("lesion__role"),
            is_cystic=F("lesion__is_cystic"),
            is_dural=F("lesion__is_dural"),
            previously_irradiated=F("lesion__previously_irradiated"),
            progressing_since_treatment=F("lesion__progressing_since_treatment"),
            too_small_to_measure=F("lesion__too_small_to_measure"),
            first_seen_is_baseline=F("lesion__first_seen_timepoint__is_baseline"),
            model_name=F("segmentation_run__model_version__name"),
            model_version_number=F("segmentation_run__model_version__version"),
        )
        .order_by("timepoint__patient_id", "timepoint__scan_date", "timepoint_id", "lesion_id")
    )
    # values() rows are dicts (django-stubs types them as TypedDicts of the selected fields).
    return cast(Iterator[dict[str, Any]], queryset.iterator(chunk_size=CHUNK_SIZE))


def run_findings(trial: Trial) -> dict[int, dict[str, Any]]:
    """Run id -> ``findings`` for the trial's runs whose mask has labels a stage after the network added
    (one query; most runs have none and are left out)."""
    rows = (
        SegmentationRun.objects.filter(series__timepoint__patient__trial=trial, is_shadow=False)
        .exclude(findings={})
        .values_list("pk", "findings")
    )
    return {pk: findings for pk, findings in rows if isinstance(findings, dict)}


def patients(trial: Trial, filters: ExportFilters) -> Iterator[dict[str, Any]]:
    """One dict per patient of the trial (site filter applied), ordered by record id."""
    queryset = (
        Patient.objects.filter(trial=trial)
        .filter(filters.patient_q())
        .values(
            "pk",
            "subject_id",
            "enrolment_date",
            "treatment_start_date",
            site_code=F("site__code"),
        )
        .order_by("pk")
    )
    # values() rows are dicts (django-stubs types them as TypedDicts of the selected fields).
    return cast(Iterator[dict[str, Any]], queryset.iterator(chunk_size=CHUNK_SIZE))


def _visit_key(row: dict[str, Any]) -> tuple[int, dt.date, int]:
    visit_id: int = row["timepoint_id"] if "timepoint_id" in row else row["pk"]
    return (row["patient_id"], row["scan_date"], visit_id)


def visits_with_observations(
    visit_rows: Iterable[dict[str, Any]], observation_rows: Iterable[dict[str, Any]]
) -> Iterator[tuple[dict[str, Any], list[dict[str, Any]]]]:
    """Merge-join two streams sorted by ``(patient_id, scan_date, visit id)``: yield each visit and its
    observations. Observations of visits missing from ``visit_rows`` (e.g. created between the two
    queries) are skipped rather than attached to the wrong visit.
    """
    pending: dict[str, Any] | None = None
    obs_iter = iter(observation_rows)
    exhausted = False
    for visit in visit_rows:
        key = _visit_key(visit)
        found: list[dict[str, Any]] = []
        while not exhausted:
            if pending is None:
                pending = next(obs_iter, None)
                if pending is None:
                    exhausted = True
                    break
            obs_key = _visit_key(pending)
            if obs_key < key:
                pending = None  # orphan: its visit is not in this export
                continue
            if obs_key == key:
                found.append(pending)
                pending = None
                continue
            break
        yield visit, found


def group_by_patient(
    patient_rows: Iterable[dict[str, Any]], visit_rows: Iterable[tuple[dict[str, Any], list[dict[str, Any]]]]
) -> Iterator[tuple[dict[str, Any], list[tuple[dict[str, Any], list[dict[str, Any]]]]]]:
    """Merge-join patients (sorted by id) with ``(visit, observations)`` pairs sorted by patient id."""
    visit_iter = iter(visit_rows)
    pending: tuple[dict[str, Any], list[dict[str, Any]]] | None = None
    exhausted = False
    for patient in patient_rows:
        found: list[tuple[dict[str, Any], list[dict[str, Any]]]] = []
        while not exhausted:
            if pending is None:
                pending = next(visit_iter, None)
                if pending is None:
                    exhausted = True
                    break
            patient_id = pending[0]["patient_id"]
            if patient_id < patient["pk"]:
                pending = None
                continue
            if patient_id == patient["pk"]:
                found.append(pending)
                pending = None
                continue
            break
        yield patient, found
