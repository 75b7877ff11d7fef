"""Data gathering for the dashboard pages, in a constant number of queries (no N+1).

Each function fetches whole columns (all visits, all current assessments, all observations of a patient
or a trial) in one query each and joins them in Python, so the page cost does not grow in queries with
the number of visits, lesions or patients.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from dataclasses import dataclass, field

from django.contrib.contenttypes.models import ContentType
from django.db.models import Q

from trials.choices import AssessmentSource, AssessmentStatus, Criteria, JobState, LesionRole
from trials.models import (
    Assessment,
    AuditEvent,
    ImagingSeries,
    Lesion,
    LesionObservation,
    Patient,
    ProcessingJob,
    Timepoint,
    Trial,
)
from trials.quality import ai_answer

#: Next visit expected this many days after the last one when a patient has only one visit
#: (brain-metastasis trials image every 6-8 weeks; 8 weeks is the common protocol interval).
DEFAULT_VISIT_INTERVAL_DAYS = 56

#: Order of response categories from best to worst, for "best" summaries.
RESPONSE_RANK = {"CR": 0, "PR": 1, "SD": 2, "NON-CR/NON-PD": 2, "PD": 3, "NE": 4, "": 5}


# ------------------------------------------------------------------------------------------- trial


@dataclass
class PatientSummary:
    """One row of the trial home."""

    patient_id: int
    subject_id: str
    site_code: str
    visit_count: int = 0
    last_visit_date: dt.date | None = None
    latest_response: str = ""
    latest_confirmed: bool = False
    latest_visit_label: str = ""
    bor: str = ""
    pending_reviews: int = 0
    failed_jobs: int = 0
    next_expected_visit: dt.date | None = None
    baseline_date: dt.date | None = None
    progression_date: dt.date | None = None
    url: str = ""  # the patient timeline, filled in by the view
    # (scan date, visit label, overall response, pct change from baseline) of follow-up visits
    visits: list[tuple[dt.date, str, str, float | None]] = field(default_factory=list)


def next_expected_visit(scan_dates: list[dt.date]) -> dt.date | None:
    """Last scan date plus the patient's last visit interval (or the default interval).

    Args:
        scan_dates: the patient's scan dates in any order.
    """
    if not scan_dates:
        return None
    ordered = sorted(scan_dates)
    interval = (ordered[-1] - ordered[-2]).days if len(ordered) > 1 else DEFAULT_VISIT_INTERVAL_DAYS
    return ordered[-1] + dt.timedelta(days=interval if interval > 0 else DEFAULT_VISIT_INTERVAL_DAYS)


def _failed_jobs_by_patient(trial: Trial, timepoint_patient: dict[int, int]) -> dict[int, int]:
    """Failed processing jobs per patient; jobs point at a patient, a visit or a series."""
    ct = ContentType.objects.get_for_models(Patient, Timepoint, ImagingSeries)
    rows = list(
        ProcessingJob.objects.filter(trial=trial, state=JobState.FAILED).values_list(
            "content_type_id", "object_id"
        )
    )
    series_ids = [oid for ct_id, oid in rows if ct_id == ct[ImagingSeries].pk and oid is not None]
    series_patient = (
        dict(ImagingSeries.objects.filter(pk__in=series_ids).values_list("pk", "timepoint__patient_id"))
        if series_ids
        else {}
    )
    counts: dict[int, int] = defaultdict(int)
    for ct_id, oid in rows:
        patient_id: int | None = None
        if oid is None:
            continue
        if ct_id == ct[Patient].pk:
            patient_id = oid
        elif ct_id == ct[Timepoint].pk:
            patient_id = timepoint_patient.get(oid)
        elif ct_id == ct[ImagingSeries].pk:
            patient_id = series_patient.get(oid)
        if patient_id is not None:
            counts[patient_id] += 1
    return counts


def trial_patient_summaries(trial: Trial) -> list[PatientSummary]:
    """Per patient of a trial: latest response, BOR, pending reviews, failed jobs, next expected visit."""
    summaries: dict[int, PatientSummary] = {
        p.pk: PatientSummary(p.pk, p.subject_id, p.site.code)
        for p in Patient.objects.filter(trial=trial).select_related("site").order_by("subject_id")
    }
    timepoint_patient: dict[int, int] = {}
    dates: dict[int, list[dt.date]] = defaultdict(list)
    for tp_id, patient_id, scan_date, is_baseline in Timepoint.objects.filter(
        patient__trial=trial
    ).values_list("pk", "patient_id", "scan_date", "is_baseline"):
        timepoint_patient[tp_id] = patient_id
        dates[patient_id].append(scan_date)
        if is_baseline:
            summaries[patient_id].baseline_date = scan_date
    assessments = (
        Assessment.objects.filter(timepoint__patient__trial=trial, is_current=True, criteria=Criteria.RANO_BM)
        .order_by("timepoint__scan_date", "timepoint__visit_label")
        .values_list(
            "timepoint__patient_id",
            "timepoint__scan_date",
            "timepoint__visit_label",
            "timepoint__is_baseline",
            "overall_response",
            "confirmed",
            "best_overall_response",
            "status",
            "pct_change_from_baseline",
            "progression_date",
        )
    )
    for patient_id, scan_date, label, is_baseline, overall, confirmed, bor, status, pct, prog in assessments:
        summary = summaries[patient_id]
        if status == AssessmentStatus.DRAFT:  # the baseline read (its targets) is reviewed too, as the
            summary.pending_reviews += 1  # timeline and the data-quality page count it
        if is_baseline:
            continue
        summary.visits.append((scan_date, label, overall, pct))
        if overall:
            summary.latest_response, summary.latest_confirmed = overall, confirmed
            summary.latest_visit_label = label
        if bor:
            summary.bor = bor
        if prog and summary.progression_date is None:
            summary.progression_date = prog
    for patient_id, count in _failed_jobs_by_patient(trial, timepoint_patient).items():
        if patient_id in summaries:
            summaries[patient_id].failed_jobs = count
    for patient_id, patient_dates in dates.items():
        summary = summaries[patient_id]
        summary.visit_count = len(patient_dates)
        summary.last_visit_date = max(patient_dates)
        summary.next_expected_visit = None if summary.progression_date else next_expected_visit(patient_dates)
    return list(summaries.values())


# ----------------------------------------------------------------------------------------- patient


@dataclass
class LesionRow:
    """One lesion at one visit, for the lesion table."""

    lesion: Lesion
    observation: LesionObservation | None
    category: str  # "target", "non-target", "new", "dropped"
    change_mm: float | None  # LD change from the lesion's baseline (or first) LD


@dataclass
class VisitRow:
    """One visit of the patient timeline."""

    timepoint: Timepoint
    assessment: Assessment | None
    volumetric: Assessment | None
    ai_assessment: Assessment | None  # the AI's own answer: the latest row of source "ai" (None: none)
    lesions: list[LesionRow]
    series: list[ImagingSeries]
    jobs: list[ProcessingJob]
    nadir_visit_label: str = ""  # the visit of the nadir the assessment compares with
    after_progression: bool = False  # scanned after the patient's first progression (current responses)


def patient_timeline(patient: Patient) -> list[VisitRow]:
    """Visits in order with current assessments, lesion rows, series and jobs (about 6 queries)."""
    timepoints = list(patient.timepoints.order_by("scan_date", "visit_label"))
    current = list(
        Assessment.objects.filter(timepoint__patient=patient, is_current=True)
        .select_related("signed_by", "supersedes", "model_version")
        .order_by("timepoint_id")
    )
    rano = {a.timepoint_id: a for a in current if a.criteria == Criteria.RANO_BM}
    volumetric = {a.timepoint_id: a for a in current if a.criteria == Criteria.VOLUMETRIC}
    lesions = list(Lesion.objects.filter(patient=patient).select_related("first_seen_timepoint"))
    observations = list(
        LesionObservation.objects.filter(timepoint__patient=patient)
        .select_related("lesion", "segmentation_run")
        .order_by("id")
    )
    by_visit: dict[int, dict[int, LesionObservation]] = defaultdict(dict)
    for obs in observations:
        by_visit[obs.timepoint_id][obs.lesion_id] = obs
    first_ld: dict[int, float] = {}
    order = {tp.pk: i for i, tp in enumerate(timepoints)}
    for obs in sorted(observations, key=lambda o: order.get(o.timepoint_id, 0)):
        if obs.present and obs.longest_diameter_mm is not None and obs.lesion_id not in first_ld:
            first_ld[obs.lesion_id] = obs.longest_diameter_mm
    series = list(ImagingSeries.objects.filter(timepoint__patient=patient).order_by("id"))
    series_by_visit: dict[int, list[ImagingSeries]] = defaultdict(list)
    for s in series:
        series_by_visit[s.timepoint_id].append(s)
    jobs_by_visit = _jobs_by_visit(series, timepoints)
    labels = {tp.pk: tp.visit_label for tp in timepoints}
    rows: list[VisitRow] = []
    for tp in timepoints:
        lesion_rows = _lesion_rows(tp, lesions, by_visit.get(tp.pk, {}), first_ld)
        assessment = rano.get(tp.pk)
        ai = assessment  # the AI's own answer as delivered: the latest row of source "ai" in the chain
        while ai is not None and ai.source != AssessmentSource.AI:
            ai = ai.supersedes
        rows.append(
            VisitRow(
                tp,
                assessment,
                volumetric.get(tp.pk),
                ai,
                lesion_rows,
                series_by_visit.get(tp.pk, []),
                jobs_by_visit.get(tp.pk, []),
                labels.get(assessment.nadir_timepoint_id, "")
                if assessment is not None and assessment.nadir_timepoint_id is not None
                else "",
            )
        )
    progressed = next(
        (
            r.timepoint.scan_date
            for r in rows
            if r.assessment is not None and r.assessment.overall_response == "PD"
        ),
        None,
    )
    for r in rows:
        r.after_progression = progressed is not None and r.timepoint.scan_date > progressed
    return rows


def _jobs_by_visit(
    series: list[ImagingSeries], timepoints: list[Timepoint]
) -> dict[int, list[ProcessingJob]]:
    """Visit id -> its jobs and its series' jobs, newest first (one query)."""
    ct = ContentType.objects.get_for_models(ImagingSeries, Timepoint)
    jobs = list(
        ProcessingJob.objects.filter(
            Q(content_type=ct[ImagingSeries], object_id__in=[s.pk for s in series])
            | Q(content_type=ct[Timepoint], object_id__in=[tp.pk for tp in timepoints])
        ).order_by("-enqueued_at")[:200]
    )
    series_visit = {s.pk: s.timepoint_id for s in series}
    jobs_by_visit: dict[int, list[ProcessingJob]] = defaultdict(list)
    for job in jobs:
        if job.object_id is None:
            continue
        visit = job.object_id if job.content_type_id == ct[Timepoint].pk else series_visit.get(job.object_id)
        if visit is not None:
            jobs_by_visit[visit].append(job)
    return jobs_by_visit


def _lesion_rows(
    tp: Timepoint,
    lesions: list[Lesion],
    visit_obs: dict[int, LesionObservation],
    first_ld: dict[int, float],
) -> list[LesionRow]:
    """The lesion table of one visit: each observed lesion with its category and its change in LD (mm)
    since it was first measured."""
    rows: list[LesionRow] = []
    for lesion in sorted(lesions, key=lambda les: lesion_sort_key(les.label)):
        obs = visit_obs.get(lesion.pk)
        if obs is None:
            continue
        if lesion.is_false_positive:
            category = "dropped"
        elif lesion.role == LesionRole.TARGET:
            category = "target"
        elif not tp.is_baseline and lesion.first_seen_timepoint_id == tp.pk:
            category = "new"
        else:
            category = "non-target"
        change = None
        if obs.longest_diameter_mm is not None and lesion.pk in first_ld and not tp.is_baseline:
            change = (obs.longest_diameter_mm if obs.present else 0.0) - first_ld[lesion.pk]
        rows.append(LesionRow(lesion, obs, category, change))
    return rows


def lesion_sort_key(label: str) -> tuple[int, str]:
    """Sort L2 before L10."""
    digits = label[1:]
    return (int(digits) if digits.isdigit() else 10**9, label)


def visit_audit_events(timepoint: Timepoint, limit: int = 200) -> list[AuditEvent]:
    """Audit events of one visit: the visit itself, its assessments, observations and series, and every
    event sharing a correlation id with those (e.g. a lesion flag changed during this visit's review)."""
    assessment_ids = [
        str(pk) for pk in Assessment.objects.filter(timepoint=timepoint).values_list("pk", flat=True)
    ]
    observation_ids = [
        str(pk) for pk in LesionObservation.objects.filter(timepoint=timepoint).values_list("pk", flat=True)
    ]
    series_ids = [str(pk) for pk in timepoint.series.values_list("pk", flat=True)]
    direct = (
        Q(object_type="trials.timepoint", object_id=str(timepoint.pk))
        | Q(object_type="trials.assessment", object_id__in=assessment_ids)
        | Q(object_type="trials.lesionobservation", object_id__in=observation_ids)
        | Q(object_type="trials.imagingseries", object_id__in=series_ids)
    )
    review_ids = (
        AuditEvent.objects.filter(object_type="trials.timepoint", object_id=str(timepoint.pk))
        .exclude(correlation_id="")
        .values("correlation_id")
    )
    return list(
        AuditEvent.objects.filter(
            direct | Q(correlation_id__in=review_ids, object_type="trials.lesion")
        ).order_by("-created_at", "-id")[:limit]
    )


# ---------------------------------------------------------------------------------------- worklist


@dataclass
class WorklistRow:
    """A visit awaiting a radiologist's review, with what its response means for the patient."""

    assessment: Assessment
    waiting_days: int
    ai_response: str  # the AI's own answer ("" at baseline)
    previous_response: str  # the patient's current response at the visit before ("" if none)

    @property
    def changes_response(self) -> bool:
        """Whether signing this visit changes the patient's response (baseline: never)."""
        response = self.assessment.overall_response
        return bool(response) and response != self.previous_response


def worklist(trial_ids: list[int], *, today: dt.date, limit: int = 500) -> list[WorklistRow]:
    """Visits whose current RANO-BM assessment is an unsigned draft, in the given trials, oldest draft
    first (three queries)."""
    drafts = list(
        Assessment.objects.filter(
            timepoint__patient__trial_id__in=trial_ids,
            criteria=Criteria.RANO_BM,
            is_current=True,
            status=AssessmentStatus.DRAFT,
        )
        .select_related("timepoint__patient__trial")
        .annotate(ai=ai_answer())
        .order_by("created_at", "pk")[:limit]
    )
    patients = {a.timepoint.patient_id for a in drafts}
    history: dict[int, list[tuple[dt.date, int, str]]] = defaultdict(list)
    for patient_id, scan_date, pk, response in (
        Assessment.objects.filter(
            timepoint__patient_id__in=patients, criteria=Criteria.RANO_BM, is_current=True
        )
        .order_by("timepoint__scan_date", "timepoint_id")
        .values_list("timepoint__patient_id", "timepoint__scan_date", "timepoint_id", "overall_response")
    ):
        history[patient_id].append((scan_date, pk, response))
    rows = []
    for draft in drafts:
        visit = draft.timepoint
        before = [r for d, pk, r in history[visit.patient_id] if (d, pk) < (visit.scan_date, visit.pk)]
        rows.append(
            WorklistRow(
                assessment=draft,
                waiting_days=max(0, (today - draft.created_at.date()).days),
                ai_response=getattr(draft, "ai", "") or "",
                previous_response=before[-1] if before else "",
            )
        )
    return rows
