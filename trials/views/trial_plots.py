"""Trial plots: waterfall (best % change of SLD per patient by BOR), spider and swimmer."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from trials import charts
from trials.views.common import trial_for
from trials.views.queries import PatientSummary, trial_patient_summaries


def plot_rows(
    summaries: list[PatientSummary],
) -> tuple[list[charts.WaterfallRow], list[charts.SpiderPoint], list[charts.SwimmerRow]]:
    """Rows of the three trial charts from the patient summaries (patients with a baseline only)."""
    waterfall: list[charts.WaterfallRow] = []
    spider: list[charts.SpiderPoint] = []
    swimmer: list[charts.SwimmerRow] = []
    for summary in summaries:
        if summary.baseline_date is None:
            continue
        changes = [pct for _, _, _, pct in summary.visits if pct is not None]
        if changes:
            waterfall.append(charts.WaterfallRow(summary.subject_id, min(changes), summary.bor))
        spider.append(charts.SpiderPoint(summary.subject_id, 0, 0.0, ""))
        # Each response is drawn forward, from its visit to the next one: what was known during that
        # time. The baseline's span is "on study"; the last visit's response is a mark at its day.
        segments: list[tuple[int, int, str]] = []
        previous_day, previous_response = 0, ""
        pd_day = None
        for scan_date, _label, response, pct in summary.visits:
            day = (scan_date - summary.baseline_date).days
            if pct is not None:
                spider.append(charts.SpiderPoint(summary.subject_id, day, pct, response))
            if day > previous_day:
                segments.append((previous_day, day, previous_response))
            previous_day, previous_response = day, response
            if response == "PD" and pd_day is None:
                pd_day = day
        if summary.progression_date is not None:
            pd_day = (summary.progression_date - summary.baseline_date).days
        swimmer.append(
            charts.SwimmerRow(
                summary.subject_id,
                segments,
                pd_day,
                ongoing=pd_day is None,
                last=(previous_day, previous_response) if previous_response else None,
            )
        )
    return waterfall, spider, swimmer


@login_required
def trial_plots(request: HttpRequest, trial_id: int) -> HttpResponse:
    """Waterfall, spider and swimmer plots of a trial."""
    trial = trial_for(request.user, trial_id)
    waterfall, spider, swimmer = plot_rows(trial_patient_summaries(trial))
    figures = {
        "waterfall": charts.waterfall_figure(
            waterfall, pr_threshold_pct=trial.pr_threshold_pct, pd_threshold_pct=trial.pd_threshold_pct
        ).to_json(),
        "spider": charts.spider_figure(spider, pr_threshold_pct=trial.pr_threshold_pct).to_json(),
        "swimmer": charts.swimmer_figure(swimmer).to_json(),
    }
    return render(
        request,
        "dashboard/trial_plots.html",
        {"trial": trial, "figures": figures, "patient_count": len(swimmer), "waterfall_rows": waterfall},
    )
