"""trials.charts: threshold lines against hand-computed values (rano-bm.md 3, 7), ordering, input errors."""

from __future__ import annotations

import datetime as dt

import pytest

from trials import charts

D = dt.date


def _trace(fig: object, prefix: str) -> object:
    matches = [t for t in fig.data if (t.name or "").startswith(prefix)]  # type: ignore[attr-defined]
    assert len(matches) == 1, [t.name for t in fig.data]  # type: ignore[attr-defined]
    return matches[0]


def test_burden_thresholds_follow_baseline_and_running_nadir() -> None:
    # SLD 50 (baseline) -> 40 -> 30 -> 45: nadirs before each follow-up are 50, 40, 30.
    points = [
        charts.BurdenPoint("FU2", D(2024, 5, 1), 30.0, response="PR"),
        charts.BurdenPoint("BASELINE", D(2024, 1, 1), 50.0, is_baseline=True),
        charts.BurdenPoint("FU1", D(2024, 3, 1), 40.0, response="SD"),
        charts.BurdenPoint("FU3", D(2024, 7, 1), 45.0, response="PD"),
    ]
    fig = charts.burden_figure(points)
    sld = _trace(fig, "SLD")
    assert list(sld.y) == [50.0, 40.0, 30.0, 45.0]  # sorted by date
    assert list(sld.text) == ["BL", "SD", "PR", "PD"]  # the category is text, not only colour
    pr = _trace(fig, "PR threshold")
    assert list(pr.y) == pytest.approx([35.0, 35.0])  # 70% of baseline 50
    pd = _trace(fig, "PD threshold")
    # Step "hv": threshold of FU1 (1.2 x 50) from BASELINE, of FU2 (1.2 x 40) from FU1, of FU3 (1.2 x 30) from FU2.
    assert list(pd.x) == ["2024-01-01", "2024-03-01", "2024-05-01", "2024-07-01"]
    assert list(pd.y) == pytest.approx([60.0, 48.0, 36.0, 36.0])
    assert pd.line.shape == "hv"
    nadir = _trace(fig, "Nadir")
    assert list(nadir.y) == [30.0] and "FU2" in nadir.name


def test_burden_volumetric_thresholds_are_settings() -> None:
    points = [
        charts.BurdenPoint("BL", D(2024, 1, 1), 1000.0, is_baseline=True),
        charts.BurdenPoint("FU1", D(2024, 2, 1), 500.0),
    ]
    fig = charts.burden_figure(
        points, pr_threshold_pct=-65, pd_threshold_pct=73, quantity="Total volume", unit="mm3"
    )
    assert list(_trace(fig, "PR threshold").y) == pytest.approx([350.0, 350.0])
    assert list(_trace(fig, "PD threshold").y) == pytest.approx([1730.0, 1730.0])


@pytest.mark.parametrize(
    ("points", "message"),
    [
        ([charts.BurdenPoint("FU1", D(2024, 2, 1), 10.0)], "exactly one baseline"),
        (
            [
                charts.BurdenPoint("A", D(2024, 1, 1), 10.0, is_baseline=True),
                charts.BurdenPoint("B", D(2024, 2, 1), 10.0, is_baseline=True),
            ],
            "exactly one baseline",
        ),
        (
            [
                charts.BurdenPoint("BL", D(2024, 1, 1), 10.0, is_baseline=True),
                charts.BurdenPoint("FU1", D(2024, 2, 1), -1.0),
            ],
            "negative",
        ),
    ],
)
def test_burden_rejects_bad_rows(points: list[charts.BurdenPoint], message: str) -> None:
    with pytest.raises(charts.ChartInputError, match=message):
        charts.burden_figure(points)


def test_waterfall_sorted_largest_increase_first_and_labelled_by_bor() -> None:
    rows = [
        charts.WaterfallRow("S1", -50.0, "PR"),
        charts.WaterfallRow("S2", 25.0, "PD"),
        charts.WaterfallRow("S3", -5.0, "SD"),
        charts.WaterfallRow("S4", -100.0, "CR"),
    ]
    fig = charts.waterfall_figure(rows)
    assert list(fig.layout.xaxis.categoryarray) == ["S2", "S3", "S1", "S4"]
    bars = {
        (x, y, text) for trace in fig.data for x, y, text in zip(trace.x, trace.y, trace.text, strict=True)
    }
    assert bars == {("S2", 25.0, "PD"), ("S3", -5.0, "SD"), ("S1", -50.0, "PR"), ("S4", -100.0, "CR")}
    assert {t.name: t.marker.color for t in fig.data} == {
        r: charts.RESPONSE_COLOURS[r] for r in ("PD", "SD", "PR", "CR")
    }
    assert sorted(shape.y0 for shape in fig.layout.shapes) == [-30.0, 20.0]


def test_lesion_curves_one_trace_per_label_in_numeric_order() -> None:
    points = [charts.LesionPoint(f"L{n}", D(2024, 1, d), float(n * d)) for n in (10, 2, 1) for d in (1, 2)]
    fig = charts.lesion_curves_figure(points)
    assert [t.name for t in fig.data] == ["L1", "L2", "L10"]
    assert list(fig.data[2].y) == [10.0, 20.0]


def test_spider_and_swimmer() -> None:
    spider = charts.spider_figure(
        [
            charts.SpiderPoint("S1", 60, -40.0, "PR"),
            charts.SpiderPoint("S1", 0, 0.0),
            charts.SpiderPoint("S2", 0, 0.0),
            charts.SpiderPoint("S2", 50, -35.0, "PR"),
            charts.SpiderPoint("S3", 0, 0.0),
            charts.SpiderPoint("S3", 55, 30.0, "PD"),
        ]
    )
    lines = {t.name: (list(t.x), list(t.y)) for t in spider.data}
    # One trace per latest response; patients within it are separate lines (a gap between them).
    assert lines == {
        "latest PR": ([0, 60, None, 0, 50], [0.0, -40.0, None, 0.0, -35.0]),
        "latest PD": ([0, 55], [0.0, 30.0]),
    }
    swimmer = charts.swimmer_figure(
        [
            charts.SwimmerRow("S1", [(0, 60, "SD"), (60, 120, "PD")], pd_day=120, ongoing=False),
            charts.SwimmerRow("S2", [(0, 200, "PR")], ongoing=True),
        ]
    )
    bars = sorted(
        (y, base, length, text)
        for t in swimmer.data
        if t.type == "bar"
        for y, base, length, text in zip(t.y, t.base, t.x, t.text, strict=True)
    )
    assert bars == [("S1", 0, 60, "SD"), ("S1", 60, 60, "PD"), ("S2", 0, 200, "PR")]
    pd_marks = _trace(swimmer, "PD (progression date)")
    assert list(pd_marks.x) == [120] and list(pd_marks.y) == ["S1"]
    assert list(_trace(swimmer, "Ongoing").y) == ["S2"]


def test_swimmer_rejects_backwards_segment() -> None:
    with pytest.raises(charts.ChartInputError, match="before it starts"):
        charts.swimmer_figure([charts.SwimmerRow("S1", [(50, 10, "SD")])])


def test_spider_lines_are_labelled_by_subject_at_their_last_point() -> None:
    spider = charts.spider_figure(
        [
            charts.SpiderPoint("S1", 0, 0.0),
            charts.SpiderPoint("S1", 60, -40.0, "PR"),
            charts.SpiderPoint("S2", 0, 0.0),
            charts.SpiderPoint("S2", 50, -35.0, "PR"),
        ]
    )
    (trace,) = spider.data
    assert list(trace.text) == ["", "S1", "", "", "S2"]  # "" at the gap between the two lines
    assert list(trace.customdata) == ["S1", "S1 PR", "", "S2", "S2 PR"]  # the hover text


def test_swimmer_draws_each_response_forward_from_its_visit() -> None:
    """SD at day 60, PD at day 120: day 0-60 is "on study" (nothing known yet), 60-120 is SD (known from
    the day-60 scan), and the PD is a mark at day 120 (its span has not ended)."""
    import datetime as dt

    from trials.views.queries import PatientSummary
    from trials.views.trial_plots import plot_rows

    start = dt.date(2024, 1, 1)
    summary = PatientSummary(
        1, "S1", "01", baseline_date=start, progression_date=start + dt.timedelta(days=120),
        visits=[(start + dt.timedelta(days=60), "FU1", "SD", -10.0),
                (start + dt.timedelta(days=120), "FU2", "PD", 30.0)],
    )  # fmt: skip
    _, _, (row,) = plot_rows([summary])
    assert list(row.segments) == [(0, 60, ""), (60, 120, "SD")]
    assert row.last == (120, "PD") and row.pd_day == 120 and not row.ongoing
    figure = charts.swimmer_figure([row])
    last = _trace(figure, "PD at the last visit")
    assert list(last.x) == [120] and list(last.y) == ["S1"]
