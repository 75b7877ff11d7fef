"""Data-quality checks of a trial, for data managers: what is missing, failed, pending or unconfirmed.

    report = quality_report(trial)                # one query per section, whatever the trial's size
    report.missing_images, report.failed_jobs, report.awaiting_review, report.unconfirmed_responses,
    report.overrides_by_reader, report.agreement  # AI-vs-reader Cohen's kappa (rano.metrics)
    report.shadow                                 # the shadow candidate vs the active model, or None

Sections list at most ``limit`` rows each (oldest first) with their full count, so a large trial's page
stays small. Responses, confirmation and settings are read from the stored assessments.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from django.db.models import Count, Exists, F, Max, OuterRef, Q, Subquery
from django.utils import timezone

from rano.metrics import cohens_kappa
from trials.choices import AssessmentSource, AssessmentStatus, Criteria, JobState, ResponseChoices
from trials.models import Assessment, ImagingSeries, ProcessingJob, Timepoint, Trial, TrialModel

#: Rows listed per section by default.
DEFAULT_LIMIT = 200


class QualityInputError(ValueError):
    """An argument of a data-quality check is invalid."""


@dataclass(frozen=True)
class VisitRef:
    """A visit, as listed in a quality section."""

    timepoint_id: int
    patient_id: int
    subject_id: str
    site_code: str
    visit_label: str
    scan_date: dt.date


@dataclass(frozen=True)
class FailedJob:
    """A processing job that failed."""

    job_id: int
    kind: str
    object_repr: str
    error: str
    attempts: int
    finished_at: dt.datetime | None


@dataclass(frozen=True)
class PendingReview:
    """A visit whose current RANO-BM assessment is an unreviewed draft."""

    visit: VisitRef
    ai_response: str
    waiting_days: int


@dataclass(frozen=True)
class UnconfirmedResponse:
    """A CR or PR not (yet) confirmed (rano-bm.md 7), with the date its confirmation scan is due.

    ``status``: ``due`` (the due date is in the future), ``overdue`` (due date passed and no scan on or
    after it), ``scanned`` (a scan on or after the due date exists: its assessment should confirm or not).
    """

    visit: VisitRef
    response: str
    confirmation_due: dt.date
    status: str


@dataclass(frozen=True)
class ReaderActivity:
    """How often one reader confirmed and overrode the engine."""

    reader: str
    confirmations: int
    overrides: int

    @property
    def override_rate(self) -> float:
        """Fraction of the reader's signed reviews that were overrides (0..1)."""
        total = self.confirmations + self.overrides
        return self.overrides / total if total else 0.0


@dataclass(frozen=True)
class Agreement:
    """AI-vs-reader agreement on the overall response of reviewed follow-up visits.

    Attributes:
        pairs: number of visits with both an AI and a signed reader response.
        kappa: Cohen's kappa (rano.metrics.cohens_kappa); None without pairs.
        percent_agreement: share of identical responses, in %; None without pairs.
        confusion: ``{(ai, reader): count}``.
    """

    pairs: int
    kappa: float | None
    percent_agreement: float | None
    confusion: dict[tuple[str, str], int] = field(default_factory=dict)

    def matrix(self) -> tuple[list[str], list[list[int]]]:
        """Categories present (CDISC order) and the confusion counts, rows AI, columns reader."""
        order = [c for c in ResponseChoices.values if any(c in key for key in self.confusion)]
        return order, [[self.confusion.get((a, r), 0) for r in order] for a in order]


@dataclass(frozen=True)
class Section:
    """Up to ``limit`` rows of one check and the total number of rows it found."""

    rows: list[Any]
    total: int

    @property
    def truncated(self) -> bool:
        return self.total > len(self.rows)


@dataclass(frozen=True)
class ShadowComparison:
    """The trial's latest shadow candidate and its agreement with the active model, as the shadow job
    last computed it (:func:`trials.pipeline.shadow.shadow_agreement`; empty before its first run)."""

    trial_model: TrialModel
    agreement: dict[str, Any]

    @property
    def response_rows(self) -> list[tuple[str, list[int]]]:
        """(AI response, counts per candidate response) rows of the confusion table."""
        responses = self.agreement.get("responses") or {}
        return list(zip(responses.get("categories", []), responses.get("confusion", []), strict=True))


@dataclass(frozen=True)
class QualityReport:
    """Every data-quality check of one trial, as of ``today``."""

    trial: Trial
    today: dt.date
    missing_images: Section
    failed_jobs: Section
    awaiting_review: Section
    unconfirmed_responses: Section
    overrides_by_reader: list[ReaderActivity]
    agreement: Agreement
    shadow: ShadowComparison | None = None


_VISIT_FIELDS = ("pk", "patient_id", "patient__subject_id", "patient__site__code", "visit_label", "scan_date")


def _visit_ref(row: dict[str, Any], prefix: str = "") -> VisitRef:
    return VisitRef(
        timepoint_id=row[f"{prefix}pk" if not prefix else f"{prefix}id"],
        patient_id=row[f"{prefix}patient_id"],
        subject_id=row[f"{prefix}patient__subject_id"],
        site_code=row[f"{prefix}patient__site__code"],
        visit_label=row[f"{prefix}visit_label"],
        scan_date=row[f"{prefix}scan_date"],
    )


def missing_images(trial: Trial, *, limit: int = DEFAULT_LIMIT) -> Section:
    """Visits with no imaging series registered."""
    queryset = (
        Timepoint.objects.filter(patient__trial=trial)
        .filter(~Exists(ImagingSeries.objects.filter(timepoint=OuterRef("pk"))))
        .order_by("scan_date", "pk")
    )
    rows = [_visit_ref(r) for r in queryset.values(*_VISIT_FIELDS)[:limit]]
    return Section(rows, queryset.count() if len(rows) == limit else len(rows))


def failed_jobs(trial: Trial, *, limit: int = DEFAULT_LIMIT) -> Section:
    """Processing jobs of the trial that failed, most recent first."""
    queryset = ProcessingJob.objects.filter(trial=trial, state=JobState.FAILED).order_by(
        "-finished_at", "-pk"
    )
    rows = [
        FailedJob(
            job_id=j["pk"],
            kind=j["kind"],
            object_repr=f"{j['content_type__model'] or 'object'} {j['object_id'] or ''}".strip(),
            error=j["error"] or j["message"],
            attempts=j["attempts"],
            finished_at=j["finished_at"],
        )
        for j in queryset.values(
            "pk", "kind", "content_type__model", "object_id", "error", "message", "attempts", "finished_at"
        )[:limit]
    ]
    return Section(rows, queryset.count() if len(rows) == limit else len(rows))


def _current(trial: Trial) -> Any:
    return Assessment.objects.filter(
        timepoint__patient__trial=trial, criteria=Criteria.RANO_BM, is_current=True
    )


def ai_answer(visit: str = "timepoint") -> Subquery:
    """The AI's own answer of the outer row's visit (``visit``: the outer field naming the visit,
    ``"pk"`` on a Timepoint queryset): its latest RANO-BM row of source ``ai`` (superseded or not; a
    result the engine computed on edited data is not the AI's)."""
    return Subquery(
        Assessment.objects.filter(
            timepoint=OuterRef(visit), criteria=Criteria.RANO_BM, source=AssessmentSource.AI
        )
        .order_by("-created_at", "-pk")
        .values("overall_response")[:1]
    )


def awaiting_review(trial: Trial, *, today: dt.date, limit: int = DEFAULT_LIMIT) -> Section:
    """Visits whose current RANO-BM assessment is a draft no reader has signed, oldest first, with the
    AI's own answer."""
    queryset = (
        _current(trial)
        .filter(status=AssessmentStatus.DRAFT)
        .annotate(ai=ai_answer())
        .order_by("created_at", "pk")
    )
    rows = [
        PendingReview(
            visit=_visit_ref(r, "timepoint__"),
            ai_response=r["ai"] or "",
            waiting_days=max(0, (today - timezone.localdate(r["created_at"])).days),
        )
        for r in queryset.values(
            *(f"timepoint__{name}" for name in _VISIT_FIELDS[1:]),
            "timepoint__id",
            "ai",
            "created_at",
        )[:limit]
    ]
    return Section(rows, queryset.count() if len(rows) == limit else len(rows))


def unconfirmed_responses(trial: Trial, *, today: dt.date, limit: int = DEFAULT_LIMIT) -> Section:
    """Current CR/PR responses not confirmed, with the confirmation scan's due date.

    Due date: scan date + ``confirmation_days`` stored with the assessment (the trial's setting when the
    assessment stored none). A response the patient has since progressed from is left out: no
    confirmation scan is due after a later PD (rano-bm.md section 7).
    """
    progressed_later = Assessment.objects.filter(
        timepoint__patient_id=OuterRef("timepoint__patient_id"),
        timepoint__scan_date__gt=OuterRef("timepoint__scan_date"),
        criteria=Criteria.RANO_BM,
        is_current=True,
        overall_response=ResponseChoices.PD,
    )
    last_scan = (
        Timepoint.objects.filter(patient_id=OuterRef("timepoint__patient_id"))
        .order_by()
        .values("patient_id")
        .annotate(last=Max("scan_date"))
        .values("last")
    )
    queryset = (
        _current(trial)
        .filter(overall_response__in=(ResponseChoices.CR, ResponseChoices.PR), confirmed=False)
        .filter(~Exists(progressed_later))
        .annotate(last_scan=Subquery(last_scan))
        .order_by("timepoint__scan_date", "pk")
    )
    rows = []
    for r in queryset.values(
        *(f"timepoint__{name}" for name in _VISIT_FIELDS[1:]),
        "timepoint__id",
        "overall_response",
        "settings",
        "last_scan",
    )[:limit]:
        days = (r["settings"] or {}).get("confirmation_days", trial.confirmation_days)
        due = r["timepoint__scan_date"] + dt.timedelta(days=int(days))
        if r["last_scan"] is not None and r["last_scan"] >= due:
            status = "scanned"
        elif today >= due:
            status = "overdue"
        else:
            status = "due"
        rows.append(UnconfirmedResponse(_visit_ref(r, "timepoint__"), r["overall_response"], due, status))
    return Section(rows, queryset.count() if len(rows) == limit else len(rows))


def overrides_by_reader(trial: Trial) -> list[ReaderActivity]:
    """Per reader: signed confirmations and overrides (superseded rows included: they were signed)."""
    rows = (
        Assessment.objects.filter(timepoint__patient__trial=trial, signed_by__isnull=False)
        .values(reader=F("signed_by__username"))
        .annotate(
            confirmations=Count("pk", filter=Q(status=AssessmentStatus.CONFIRMED)),
            overrides=Count("pk", filter=Q(status=AssessmentStatus.OVERRIDDEN)),
        )
        .order_by("-overrides", "reader")
    )
    return [ReaderActivity(r["reader"], r["confirmations"], r["overrides"]) for r in rows]


def agreement(trial: Trial) -> Agreement:
    """AI-vs-reader agreement over follow-up visits a reader has signed.

    AI response: the AI's own answer as delivered (:func:`ai_answer`). Reader response: the signed
    current assessment: a confirmation of the AI's row agrees by construction; a confirmation of a result
    re-computed after the reader's edits, or an override, may or may not. Kappa:
    ``rano.metrics.cohens_kappa``.
    """
    pairs = [
        (p["ai"], p["overall_response"])
        for p in _current(trial)
        .filter(status__in=(AssessmentStatus.CONFIRMED, AssessmentStatus.OVERRIDDEN))
        .exclude(overall_response="")
        .annotate(ai=ai_answer())
        .values("ai", "overall_response")
        if p["ai"]
    ]
    if not pairs:
        return Agreement(0, None, None, {})
    ai_side, reader_side = [a for a, _ in pairs], [r for _, r in pairs]
    same = sum(a == r for a, r in pairs)
    return Agreement(
        pairs=len(pairs),
        kappa=cohens_kappa(ai_side, reader_side),
        percent_agreement=100.0 * same / len(pairs),
        confusion=dict(Counter(pairs)),
    )


def shadow_comparison(trial: Trial) -> ShadowComparison | None:
    """The trial's most recently started shadow candidate (in shadow, stopped or approved since) and its
    stored agreement with the active model; None when the trial never had one."""
    row = (
        TrialModel.objects.filter(trial=trial, shadow_started_at__isnull=False)
        .select_related("model_version")
        .order_by("-shadow_started_at", "-pk")
        .first()
    )
    return None if row is None else ShadowComparison(row, row.shadow_agreement or {})


def quality_report(
    trial: Trial, *, today: dt.date | None = None, limit: int = DEFAULT_LIMIT
) -> QualityReport:
    """Run every data-quality check of ``trial``.

    Args:
        trial: the trial.
        today: reference date for due/overdue and waiting times (default: today in the site's time zone).
        limit: rows listed per section (>= 1).

    Raises:
        QualityInputError: ``limit`` below 1.
    """
    if limit < 1:
        raise QualityInputError(f"limit must be at least 1, got {limit}.")
    today = today or timezone.localdate()
    return QualityReport(
        trial=trial,
        today=today,
        missing_images=missing_images(trial, limit=limit),
        failed_jobs=failed_jobs(trial, limit=limit),
        awaiting_review=awaiting_review(trial, today=today, limit=limit),
        unconfirmed_responses=unconfirmed_responses(trial, today=today, limit=limit),
        overrides_by_reader=overrides_by_reader(trial),
        agreement=agreement(trial),
        shadow=shadow_comparison(trial),
    )
