"""Dashboard charts: pure functions ``rows -> plotly Figure`` (no database access, no Django).

Views gather rows (plain dataclasses below), call one of these functions and serialise the figure with
``figure.to_json()``; the browser draws it with the plotly.js served from the installed plotly package.

Every chart carries the response category as text (hover text, labels or legend names), never colour
alone, so that it reads in greyscale and for colour-blind users.

What is here:
    burden_figure          SLD (mm) or total volume (mm3) over time with baseline, nadir, PR and PD lines
    lesion_curves_figure   one curve per lesion (LD or volume) over time
    waterfall_figure       best % change of SLD per patient, bars coloured and labelled by BOR
    spider_figure          % change from baseline over time, one line per patient
    swimmer_figure         time on study per patient with response segments and PD marks
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field

import plotly.graph_objects as go

#: Colours of the response categories (Okabe-Ito palette: distinguishable with colour-vision deficits).
RESPONSE_COLOURS: dict[str, str] = {
    "CR": "#009E73",
    "PR": "#56B4E9",
    "SD": "#E69F00",
    "PD": "#D55E00",
    "NE": "#999999",
    "NON-CR/NON-PD": "#CC79A7",
    "": "#BBBBBB",
}

_LAYOUT_BASE: dict[str, object] = {
    # Explicit white styling rather than template="plotly_white": loading and validating a template
    # costs about 40 ms per figure, most of a trial-plots page.
    "plot_bgcolor": "#ffffff",
    "paper_bgcolor": "#ffffff",
    "margin": {"l": 60, "r": 20, "t": 40, "b": 40},
    "height": 380,
    "font": {"family": "system-ui, sans-serif", "size": 12},
    "legend": {"orientation": "h", "y": -0.3, "yanchor": "top"},
}


def _styled(fig: go.Figure) -> go.Figure:
    """Light grid and axis lines (what the plotly_white template would give)."""
    axis = {"showgrid": True, "gridcolor": "#e5e9f0", "linecolor": "#9aa5b1", "zerolinecolor": "#c3cad3"}
    fig.update_xaxes(**axis)
    fig.update_yaxes(**axis)
    return fig


class ChartInputError(ValueError):
    """Rows given to a chart function are inconsistent (e.g. no baseline, negative values)."""


@dataclass(frozen=True)
class BurdenPoint:
    """Tumour burden at one visit.

    Attributes:
        visit_label: e.g. BASELINE, FU1.
        scan_date: date of the scan.
        value: SLD in mm, or total target volume in mm3; None when not evaluable.
        is_baseline: the baseline visit (exactly one per series of points).
        response: overall response at the visit ("" at baseline).
    """

    visit_label: str
    scan_date: dt.date
    value: float | None
    is_baseline: bool = False
    response: str = ""


@dataclass(frozen=True)
class LesionPoint:
    """One lesion at one visit (for per-lesion curves)."""

    lesion_label: str
    scan_date: dt.date
    value: float | None


@dataclass(frozen=True)
class WaterfallRow:
    """Best percentage change of SLD from baseline of one patient, with the best overall response."""

    subject_id: str
    best_pct_change: float
    bor: str


@dataclass(frozen=True)
class SpiderPoint:
    """Percentage change of SLD from baseline of one patient at one visit."""

    subject_id: str
    days_from_baseline: int
    pct_change: float
    response: str = ""


@dataclass(frozen=True)
class SwimmerRow:
    """Time on study of one patient.

    Attributes:
        subject_id: pseudonymous subject id.
        segments: ``(start_day, end_day, response)`` spans from the baseline (day 0), in order: the
            response known from a visit (start) to the next visit (end).
        pd_day: day of the first PD (progression date), None if none.
        ongoing: the patient is still on study (drawn with an arrow).
        last: ``(day, response)`` of the last assessed visit, drawn as a mark (its span has no end yet).
    """

    subject_id: str
    segments: Sequence[tuple[int, int, str]] = field(default_factory=tuple)
    pd_day: int | None = None
    ongoing: bool = True
    last: tuple[int, str] | None = None


def _running_nadirs(points: Sequence[BurdenPoint]) -> list[float | None]:
    """Nadir before each visit: the smallest value on study before it, baseline included (rano-bm.md 3)."""
    nadirs: list[float | None] = []
    best: float | None = None
    for point in points:
        nadirs.append(best)
        if point.value is not None:
            best = point.value if best is None else min(best, point.value)
    return nadirs


def burden_figure(
    points: Sequence[BurdenPoint],
    *,
    pr_threshold_pct: float = -30.0,
    pd_threshold_pct: float = 20.0,
    quantity: str = "SLD",
    unit: str = "mm",
) -> go.Figure:
    """Tumour burden over time with the baseline, the nadir and the PR and PD threshold lines.

    The PR line is ``baseline x (1 + pr_threshold_pct / 100)`` (default 70% of baseline). The PD line is a
    step: at each follow-up visit it is ``nadir x (1 + pd_threshold_pct / 100)`` where the nadir is the
    smallest value before that visit, baseline included (default 120% of nadir).

    Args:
        points: visits in any order; sorted by scan date here. One must be the baseline.
        pr_threshold_pct: signed PR threshold, percent change from baseline (e.g. -30 or -65 volumetric).
        pd_threshold_pct: signed PD threshold, percent change from nadir (e.g. +20 or +73 volumetric).
        quantity: what is plotted ("SLD", "Total volume").
        unit: its unit ("mm", "mm3").

    Returns:
        A figure with traces named ``quantity``, "Baseline", "Nadir", "PR threshold", "PD threshold".

    Raises:
        ChartInputError: no baseline or several, or a negative value.
    """
    ordered = sorted(points, key=lambda p: (p.scan_date, not p.is_baseline))
    baselines = [p for p in ordered if p.is_baseline]
    if len(baselines) != 1:
        raise ChartInputError(f"A burden chart needs exactly one baseline visit, got {len(baselines)}.")
    if any(p.value is not None and p.value < 0 for p in ordered):
        raise ChartInputError(f"{quantity} cannot be negative.")
    baseline = baselines[0]
    dates = [p.scan_date.isoformat() for p in ordered]
    hover = [
        f"{p.visit_label} {p.scan_date:%Y-%m-%d}<br>{quantity} "
        + (f"{p.value:.1f} {unit}" if p.value is not None else "not evaluable")
        + (f"<br>Response: {p.response}" if p.response else "")
        for p in ordered
    ]
    fig = go.Figure()
    fig.add_trace(
        go.Scatter(
            x=dates,
            y=[p.value for p in ordered],
            mode="lines+markers+text",
            name=quantity,
            text=[p.response or ("BL" if p.is_baseline else "") for p in ordered],
            textposition="top center",
            hovertext=hover,
            hoverinfo="text",
            line={"color": "#1d3557", "width": 2},
        )
    )
    if baseline.value is not None:
        fig.add_trace(
            go.Scatter(
                x=[dates[0], dates[-1]],
                y=[baseline.value, baseline.value],
                mode="lines",
                name=f"Baseline {baseline.value:.1f} {unit}",
                line={"color": "#555555", "dash": "dot"},
            )
        )
        pr_value = baseline.value * (1 + pr_threshold_pct / 100.0)
        fig.add_trace(
            go.Scatter(
                x=[dates[0], dates[-1]],
                y=[pr_value, pr_value],
                mode="lines",
                name=f"PR threshold ({pr_threshold_pct:+.0f}% from baseline)",
                line={"color": RESPONSE_COLOURS["PR"], "dash": "dash"},
            )
        )
    # The PD threshold of a visit holds from the previous visit up to it: a step drawn "hv" through
    # (previous date, threshold of this visit) points, closed at the last visit's date.
    nadirs = _running_nadirs(ordered)
    pd_x: list[str] = []
    pd_y: list[float] = []
    for i, (point, nadir) in enumerate(zip(ordered, nadirs, strict=True)):
        if point.is_baseline or nadir is None or i == 0:
            continue
        pd_x.append(dates[i - 1])
        pd_y.append(nadir * (1 + pd_threshold_pct / 100.0))
    if pd_x:
        pd_x.append(dates[-1])
        pd_y.append(pd_y[-1])
        fig.add_trace(
            go.Scatter(
                x=pd_x,
                y=pd_y,
                mode="lines",
                line_shape="hv",
                name=f"PD threshold ({pd_threshold_pct:+.0f}% from nadir)",
                line={"color": RESPONSE_COLOURS["PD"], "dash": "dash"},
            )
        )
    valued = [p for p in ordered if p.value is not None]
    if valued:
        nadir_point = min(valued, key=lambda p: (p.value, p.scan_date))
        fig.add_trace(
            go.Scatter(
                x=[nadir_point.scan_date.isoformat()],
                y=[nadir_point.value],
                mode="markers",
                name=f"Nadir {nadir_point.value:.1f} {unit} ({nadir_point.visit_label})",
                marker={"symbol": "triangle-down", "size": 12, "color": "#1d3557"},
            )
        )
    fig.update_layout(
        **_LAYOUT_BASE,
        title={"text": f"{quantity} over time"},
        yaxis_title=f"{quantity} ({unit})",
        xaxis_title="Scan date",
    )
    return _styled(fig)


def lesion_curves_figure(
    points: Sequence[LesionPoint], *, quantity: str = "LD", unit: str = "mm"
) -> go.Figure:
    """One line per lesion (label L1, L2...) of a measurement over time.

    Args:
        points: lesion measurements in any order; absent lesions may carry 0 and missing ones None.
        quantity: "LD" or "Volume".
        unit: "mm" or "mm3".
    """
    by_label: dict[str, list[LesionPoint]] = {}
    for point in points:
        by_label.setdefault(point.lesion_label, []).append(point)
    fig = go.Figure()
    for label in sorted(by_label, key=_label_key):
        rows = sorted(by_label[label], key=lambda p: p.scan_date)
        fig.add_trace(
            go.Scatter(
                x=[p.scan_date.isoformat() for p in rows],
                y=[p.value for p in rows],
                mode="lines+markers",
                name=label,
                hovertemplate=f"{label} %{{x}}<br>{quantity} %{{y:.1f}} {unit}<extra></extra>",
            )
        )
    fig.update_layout(
        **_LAYOUT_BASE,
        title={"text": f"Per-lesion {quantity}"},
        yaxis_title=f"{quantity} ({unit})",
        xaxis_title="Scan date",
    )
    return _styled(fig)


def _label_key(label: str) -> tuple[int, str]:
    digits = label[1:]
    return (int(digits) if digits.isdigit() else 10**9, label)


def _hline(y: float) -> dict[str, object]:
    """A dashed horizontal line across the plot at ``y`` (a layout shape; cheaper than add_hline)."""
    return {
        "type": "line",
        "xref": "paper",
        "x0": 0,
        "x1": 1,
        "yref": "y",
        "y0": y,
        "y1": y,
        "line": {"dash": "dash", "color": "#444444", "width": 1},
    }


def _hline_label(y: float, name: str) -> dict[str, object]:
    return {
        "xref": "paper",
        "x": 1,
        "xanchor": "right",
        "y": y,
        "yanchor": "bottom",
        "text": f"{name} {y:+.0f}%",
        "showarrow": False,
    }


def _by_category(rows: Sequence[object], key: str) -> dict[str, list[object]]:
    """Group rows by a response attribute, in the order categories first appear."""
    groups: dict[str, list[object]] = {}
    for row in rows:
        groups.setdefault(getattr(row, key), []).append(row)
    return groups


def waterfall_figure(
    rows: Sequence[WaterfallRow], *, pr_threshold_pct: float = -30.0, pd_threshold_pct: float = 20.0
) -> go.Figure:
    """Waterfall plot: best % change of SLD from baseline per patient, largest increase first.

    Bars are coloured by best overall response and labelled with it (text, not colour only). One trace per
    category (not per patient) keeps a 500-patient trial fast to build and to draw.
    """
    ordered = sorted(rows, key=lambda r: (-r.best_pct_change, r.subject_id))
    fig = go.Figure()
    for bor, group in _by_category(ordered, "bor").items():
        fig.add_trace(
            go.Bar(
                x=[r.subject_id for r in group],  # type: ignore[attr-defined]
                y=[r.best_pct_change for r in group],  # type: ignore[attr-defined]
                name=bor or "no BOR",
                marker_color=RESPONSE_COLOURS.get(bor, "#BBBBBB"),
                text=[bor or "-"] * len(group),
                textposition="outside",
                hovertemplate="%{x}: %{y:.1f}% (BOR %{text})<extra></extra>",
            )
        )
    fig.update_layout(
        **_LAYOUT_BASE,
        shapes=[_hline(pr_threshold_pct), _hline(pd_threshold_pct)],
        annotations=[_hline_label(pr_threshold_pct, "PR"), _hline_label(pd_threshold_pct, "PD")],
        title={"text": "Waterfall: best change of SLD from baseline"},
        yaxis_title="Best change from baseline (%)",
        xaxis={
            "categoryorder": "array",
            "categoryarray": [r.subject_id for r in ordered],
            "title": "Patient",
        },
        bargap=0.15,
    )
    return _styled(fig)


def spider_figure(points: Sequence[SpiderPoint], *, pr_threshold_pct: float = -30.0) -> go.Figure:
    """Spider plot: % change of SLD from baseline over time, one line per patient (day 0 = 0%).

    Patients are grouped into one trace per latest response (lines separated by gaps), so the legend
    reads by category and hundreds of patients stay one trace each category; each line is labelled by
    its subject id at its last point.
    """
    by_subject: dict[str, list[SpiderPoint]] = {}
    for point in points:
        by_subject.setdefault(point.subject_id, []).append(point)
    groups: dict[str, tuple[list[int | None], list[float | None], list[str]]] = {}
    labels: dict[str, list[str]] = {}  # the subject id at each line's last point, else ""
    for subject in sorted(by_subject):
        rows = sorted(by_subject[subject], key=lambda p: p.days_from_baseline)
        latest = next((p.response for p in reversed(rows) if p.response), "")
        xs, ys, texts = groups.setdefault(latest, ([], [], []))
        if xs:
            xs.append(None)  # a gap: the next patient's line starts afresh
            ys.append(None)
            texts.append("")
            labels[latest].append("")
        xs.extend(p.days_from_baseline for p in rows)
        ys.extend(p.pct_change for p in rows)
        texts.extend(f"{subject} {p.response}".strip() for p in rows)
        labels.setdefault(latest, []).extend([""] * (len(rows) - 1) + [subject])
    fig = go.Figure()
    for latest, (xs, ys, texts) in groups.items():
        fig.add_trace(
            go.Scatter(
                x=xs,
                y=ys,
                mode="lines+markers+text",
                name=f"latest {latest}" if latest else "no response yet",
                line={"color": RESPONSE_COLOURS.get(latest, "#BBBBBB")},
                text=labels[latest],
                textposition="middle right",
                customdata=texts,
                connectgaps=False,
                hovertemplate="%{customdata}: day %{x}, %{y:.1f}%<extra></extra>",
            )
        )
    fig.update_layout(
        **_LAYOUT_BASE,
        shapes=[_hline(pr_threshold_pct)],
        annotations=[_hline_label(pr_threshold_pct, "PR")],
        title={"text": "Spider: change of SLD from baseline"},
        xaxis_title="Days from baseline",
        yaxis_title="Change from baseline (%)",
    )
    return _styled(fig)


def _lane_end(row: SwimmerRow) -> int:
    return max([s[1] for s in row.segments] + ([row.last[0]] if row.last else []), default=0)


def swimmer_figure(rows: Sequence[SwimmerRow]) -> go.Figure:
    """Swimmer plot: one horizontal lane per patient with its response segments and PD marks.

    Raises:
        ChartInputError: a segment ends before it starts.
    """
    ordered = sorted(rows, key=lambda r: (_lane_end(r), r.subject_id))
    segments: dict[str, tuple[list[str], list[int], list[int]]] = {}
    for row in ordered:
        for start, end, response in row.segments:
            if end < start:
                raise ChartInputError(
                    f"{row.subject_id}: segment ends (day {end}) before it starts ({start})."
                )
            ys, bases, lengths = segments.setdefault(response, ([], [], []))
            ys.append(row.subject_id)
            bases.append(start)
            lengths.append(max(end - start, 1))
    fig = go.Figure()
    for response, (ys, bases, lengths) in segments.items():
        fig.add_trace(
            go.Bar(
                y=ys,
                x=lengths,
                base=bases,
                orientation="h",
                name=response or "on study",
                marker_color=RESPONSE_COLOURS.get(response, "#BBBBBB"),
                text=[response] * len(ys),
                textposition="inside",
                hovertemplate="%{y} from day %{base}: %{text}<extra></extra>",
            )
        )
    lasts: dict[str, tuple[list[str], list[int]]] = {}
    for row in ordered:
        if row.last is not None:
            ys, xs = lasts.setdefault(row.last[1], ([], []))
            ys.append(row.subject_id)
            xs.append(row.last[0])
    for response, (ys, xs) in lasts.items():
        fig.add_trace(
            go.Scatter(
                y=ys,
                x=xs,
                mode="markers",
                name=f"{response} at the last visit",
                marker={"symbol": "diamond", "size": 12, "color": RESPONSE_COLOURS.get(response, "#BBBBBB"),
                        "line": {"width": 1, "color": "#000000"}},
                hovertemplate="%{y} day %{x}: " + response + " (last visit)<extra></extra>",
            )
        )  # fmt: skip
    pd_rows = [r for r in ordered if r.pd_day is not None]
    if pd_rows:
        fig.add_trace(
            go.Scatter(
                y=[r.subject_id for r in pd_rows],
                x=[r.pd_day for r in pd_rows],
                mode="markers",
                name="PD (progression date)",
                marker={"symbol": "x", "size": 11, "color": "#000000"},
            )
        )
    ongoing = [r for r in ordered if r.ongoing and (r.segments or r.last)]
    if ongoing:
        fig.add_trace(
            go.Scatter(
                y=[r.subject_id for r in ongoing],
                x=[_lane_end(r) for r in ongoing],
                mode="markers",
                name="Ongoing",
                marker={"symbol": "arrow-right", "size": 11, "color": "#1d3557"},
            )
        )
    fig.update_layout(
        **_LAYOUT_BASE,
        barmode="overlay",
        title={"text": "Swimmer: time on study"},
        xaxis_title="Days from baseline",
        yaxis={
            "title": "Patient",
            "categoryorder": "array",
            "categoryarray": [r.subject_id for r in ordered],
        },
    )
    fig.update_layout(height=max(340, 22 * len(ordered) + 120))
    return _styled(fig)
