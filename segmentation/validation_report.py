"""The validation report of a model (``bm-validate``): figures, self-contained HTML, JSON and CSV.

Pure functions over a :class:`rano.validation.ValidationResult`: each figure function takes the result
and returns a plotly Figure; :func:`write_report` writes ``report.html`` (plotly.js embedded once, so the
file opens offline on a closed hospital network), ``report.json`` (the same numbers and figures), and
CSV tables (``cases.csv``, ``lesions.csv``, ``aggregate.csv``, ``detection_by_size.csv``,
``responses.csv``). No patient data beyond the case ids the caller gives (use pseudonymous ids).
"""

from __future__ import annotations

import base64
import csv
import datetime as dt
import html
import io
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import plotly.graph_objects as go
import SimpleITK as sitk
from PIL import Image
from scipy import ndimage as ndi

from rano.validation import SIZE_BIN_NAMES, ValidationResult

#: Aggregate metrics in the order of the paper's Table 2, then the additions; name, unit, better.
METRIC_ROWS: tuple[tuple[str, str, str], ...] = (
    ("dice", "Dice", "higher"),
    ("jaccard", "Jaccard", "higher"),
    ("volume_overlap_error", "VOE", "lower"),
    ("mean_surface_distance_mm", "MSD (mm)", "lower"),
    ("hausdorff_mm", "HD (mm)", "lower"),
    ("hausdorff95_mm", "HD95 (mm)", "lower"),
    ("variation_of_information", "VI", "lower"),
    ("cosine_similarity", "Cosine", "higher"),
    ("lesion_f1", "Lesion-wise F1 (mean of cases)", "higher"),
    ("pooled_lesion_f1", "Lesion-wise F1 (pooled)", "higher"),
    ("volume_ccc", "Lesion volume CCC", "higher"),
    ("lesion_sensitivity", "Lesion sensitivity", "higher"),
    ("false_positives_per_case", "False positives per case", "lower"),
    ("volume_bias_mm3", "Volume bias, model - reference (mm³)", "0"),
    ("volume_loa_lower_mm3", "Volume 95 % limits of agreement, lower (mm³)", ""),
    ("volume_loa_upper_mm3", "Volume 95 % limits of agreement, upper (mm³)", ""),
    ("ld_ccc", "LD CCC", "higher"),
    ("ld_bias_mm", "LD bias, model - reference (mm)", "0"),
    ("ld_loa_lower_mm", "LD 95 % limits of agreement, lower (mm)", ""),
    ("ld_loa_upper_mm", "LD 95 % limits of agreement, upper (mm)", ""),
    ("case_volume_ccc", "Total volume per case CCC", "higher"),
)

_LAYOUT: dict[str, Any] = {
    "paper_bgcolor": "white",
    "plot_bgcolor": "white",
    "margin": {"l": 60, "r": 20, "t": 50, "b": 60},
    "height": 360,
    "font": {"size": 13},
}


def dice_per_case_figure(result: ValidationResult) -> go.Figure:
    """Dice of each case, lowest first (the worst cases at a glance)."""
    cases = sorted(result.cases, key=lambda c: c.dice)
    fig = go.Figure(go.Bar(x=[c.case_id for c in cases], y=[c.dice for c in cases], marker_color="#3b6ea5"))
    mean = result.aggregate.get("dice")
    if mean is not None:
        fig.add_hline(y=mean, line_dash="dash", annotation_text=f"mean {mean:.3f}")
    fig.update_layout(
        title="Dice per case (lowest first)", yaxis={"range": [0, 1], "title": "Dice"}, **_LAYOUT
    )
    return fig


def detection_by_size_figure(result: ValidationResult) -> go.Figure:
    """Lesion sensitivity and false positives per case, by reference lesion size (LD)."""
    bins = list(SIZE_BIN_NAMES)
    rows = [result.detection_by_size[name] for name in bins]
    sensitivity = [row["sensitivity"] for row in rows]
    labels = [f"{row['detected']}/{row['reference_lesions']}" for row in rows]
    fig = go.Figure()
    fig.add_bar(x=bins, y=sensitivity, name="sensitivity", text=labels, marker_color="#3b6ea5")
    fig.add_bar(
        x=bins, y=[row["false_positives_per_case"] for row in rows], name="false positives / case",
        marker_color="#c0504d", yaxis="y2",
    )  # fmt: skip
    fig.update_layout(
        title="Detection by lesion size (longest diameter)",
        barmode="group",
        yaxis={"title": "sensitivity", "range": [0, 1.05]},
        yaxis2={
            "title": "false positives per case",
            "overlaying": "y",
            "side": "right",
            "rangemode": "tozero",
        },
        legend={"orientation": "h", "y": -0.2},
        **_LAYOUT,
    )
    return fig


def bland_altman_figure(result: ValidationResult) -> go.Figure:
    """Bland-Altman plot of detected lesions' volumes: difference (model - reference) against mean."""
    lesions = [lesion for case in result.cases for lesion in case.lesions if lesion.detected]
    means = [((x.predicted_volume_mm3 or 0.0) + x.reference_volume_mm3) / 2 for x in lesions]
    diffs = [(x.predicted_volume_mm3 or 0.0) - x.reference_volume_mm3 for x in lesions]
    fig = go.Figure(
        go.Scatter(
            x=means, y=diffs, mode="markers", text=[x.case_id for x in lesions], marker={"color": "#3b6ea5"}
        )
    )
    agg = result.aggregate
    for key, label, dash in (
        ("volume_bias_mm3", "bias", "solid"),
        ("volume_loa_lower_mm3", "lower limit", "dash"),
        ("volume_loa_upper_mm3", "upper limit", "dash"),
    ):
        value = agg.get(key)
        if value is not None:
            fig.add_hline(y=value, line_dash=dash, annotation_text=f"{label} {value:.0f} mm³")
    fig.update_layout(
        title="Lesion volume agreement (Bland-Altman)",
        xaxis={"title": "mean of model and reference (mm³)"},
        yaxis={"title": "model - reference (mm³)"},
        **_LAYOUT,
    )
    return fig


def confusion_figure(result: ValidationResult) -> go.Figure | None:
    """RANO-BM overall responses, reference read (rows) against the model (columns); None without
    longitudinal cases."""
    responses = result.responses
    if responses is None or not responses.pairs:
        return None
    categories = list(responses.categories)
    z = [list(row) for row in responses.confusion]
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=categories,
            y=categories,
            colorscale="Blues",
            text=z,
            texttemplate="%{text}",
            showscale=False,
        )
    )
    kappa = "undefined" if responses.kappa is None else f"{responses.kappa:.2f}"
    fig.update_layout(
        title=f"RANO-BM response: reference (rows) vs model (columns), kappa {kappa}",
        xaxis={"title": "model"},
        yaxis={"title": "reference", "autorange": "reversed"},
        **_LAYOUT,
    )
    return fig


def figures(result: ValidationResult) -> dict[str, go.Figure]:
    """Every figure of the report, by name."""
    out = {
        "dice_per_case": dice_per_case_figure(result),
        "detection_by_size": detection_by_size_figure(result),
        "volume_bland_altman": bland_altman_figure(result),
    }
    confusion = confusion_figure(result)
    if confusion is not None:
        out["response_confusion"] = confusion
    return out


#: Worst cases (lowest Dice) shown with a slice thumbnail, and the thumbnail's longest side (pixels).
WORST_CASES = 3
THUMBNAIL_PX = 192
#: Outline colours (RGB): reference solid, model dotted, so the two differ without colour as well.
REFERENCE_RGB = (0, 200, 83)
MODEL_RGB = (255, 64, 255)


@dataclass(frozen=True)
class CaseSlice:
    """One axial slice of a case, for its thumbnail: the image and both masks, (rows, columns).

    Attributes:
        image: Intensities of the slice.
        reference: Reference lesion mask of the slice.
        prediction: The model's lesion mask of the slice.
        index: Slice index (z, voxels) in the case's image.
        spacing_mm: Pixel size (row, column) in mm.
    """

    image: np.ndarray
    reference: np.ndarray
    prediction: np.ndarray
    index: int
    spacing_mm: tuple[float, float]


def case_slice(image: sitk.Image, reference: sitk.Image, prediction: sitk.Image) -> CaseSlice:
    """The axial slice of a case with the most reference voxels (the most model voxels when the reference
    is empty, the middle slice when both are), kept for the report's thumbnail (a few kB per case)."""
    ref = sitk.GetArrayViewFromImage(reference) != 0
    pred = sitk.GetArrayViewFromImage(prediction) != 0
    counts = ref.sum(axis=(1, 2)) if ref.any() else pred.sum(axis=(1, 2))
    index = int(np.argmax(counts)) if counts.any() else ref.shape[0] // 2
    spacing = image.GetSpacing()
    return CaseSlice(
        np.array(sitk.GetArrayViewFromImage(image)[index], dtype=np.float32),
        np.array(ref[index]),
        np.array(pred[index]),
        index,
        (float(spacing[1]), float(spacing[0])),
    )


def _outline(mask: np.ndarray) -> np.ndarray:
    return mask & ~ndi.binary_erosion(mask, border_value=0)


def thumbnail_png(item: CaseSlice, size_px: int = THUMBNAIL_PX) -> bytes:
    """PNG of a slice: grey image, reference outline solid green, model outline dotted magenta.

    Pixels are repeated (nearest neighbour) to square pixels and about ``size_px`` on the longest side.
    """
    rows, cols = item.image.shape
    pixel_mm = min(item.spacing_mm)
    zoom = max(1.0, size_px / max(rows * item.spacing_mm[0] / pixel_mm, cols * item.spacing_mm[1] / pixel_mm))
    row_rep = max(1, round(item.spacing_mm[0] / pixel_mm * zoom))
    col_rep = max(1, round(item.spacing_mm[1] / pixel_mm * zoom))

    def up(array: np.ndarray) -> np.ndarray:
        return np.repeat(np.repeat(array, row_rep, axis=0), col_rep, axis=1)

    low, high = np.percentile(item.image, (1, 99)) if item.image.size else (0.0, 1.0)
    grey = np.clip((item.image - low) / max(float(high - low), 1e-6), 0, 1)
    rgb = np.repeat((up(grey) * 255).astype(np.uint8)[..., None], 3, axis=2)
    reference = _outline(up(item.reference))
    model = _outline(up(item.prediction))
    r, c = np.indices(model.shape)
    rgb[model & ((r + c) % 4 < 2)] = MODEL_RGB  # dotted: every other pair of outline pixels
    rgb[reference] = REFERENCE_RGB  # solid, drawn last: whole where the outlines cross
    buffer = io.BytesIO()
    Image.fromarray(rgb, "RGB").save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def worst_cases_html(result: ValidationResult, slices: Mapping[str, CaseSlice], n: int = WORST_CASES) -> str:
    """The ``n`` lowest-Dice cases with a slice each (PNG embedded as base64), with a legend."""
    worst = [case for case in sorted(result.cases, key=lambda c: c.dice) if case.case_id in slices][:n]
    if not worst:
        return ""
    figures_html = []
    for case in worst:
        item = slices[case.case_id]
        data = base64.b64encode(thumbnail_png(item)).decode("ascii")
        caption = f"{case.case_id}: Dice {_fmt(case.dice)}, axial slice {item.index}"
        figures_html.append(
            f'<figure class="thumb" data-case="{html.escape(case.case_id)}">'
            f'<img src="data:image/png;base64,{data}" alt="{html.escape(caption)}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>"
        )
    legend = (
        '<p class="legend"><span class="key" style="color:#00c853">━━ solid outline: reference</span> · '
        '<span class="key" style="color:#ff40ff">┅┅ dotted outline: model</span> (the slice with the most reference '
        "voxels, or model voxels when the reference is empty)</p>"
    )
    return f"<h2>Worst cases (lowest Dice)</h2>{legend}<div>{''.join(figures_html)}</div>"


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return html.escape(str(value))


def report_document(
    result: ValidationResult, *, model: dict[str, Any], data: dict[str, Any], created: dt.datetime
) -> dict[str, Any]:
    """The JSON report: model identity, data description, date, metrics, CIs and figures."""
    return {
        "report": "MetTrack model validation",
        "created_utc": created.isoformat(),
        "model": model,
        "data": data,
        **result.to_dict(),
        "figures": {name: json.loads(fig.to_json()) for name, fig in figures(result).items()},
    }


def render_html(
    result: ValidationResult,
    *,
    model: dict[str, Any],
    data: dict[str, Any],
    created: dt.datetime,
    slices: Mapping[str, CaseSlice] | None = None,
) -> str:
    """The self-contained HTML report (plotly.js embedded once: it opens offline), with slice thumbnails of
    the worst cases when ``slices`` (case id -> :func:`case_slice`) are given."""
    figs = figures(result)
    parts = []
    for index, fig in enumerate(figs.values()):
        parts.append(fig.to_html(full_html=False, include_plotlyjs=index == 0, config={"displaylogo": False}))
    rows = []
    for key, label, _better in METRIC_ROWS:
        low, high = result.ci95.get(key, (None, None))
        ci = f"{_fmt(low)} – {_fmt(high)}" if low is not None else "—"
        rows.append(
            f"<tr><td>{html.escape(label)}</td><td>{_fmt(result.aggregate.get(key))}</td><td>{ci}</td></tr>"
        )
    case_rows = "".join(
        f"<tr><td>{_fmt(c.case_id)}</td><td>{_fmt(c.patient_id)}</td><td>{_fmt(c.dice)}</td>"
        f"<td>{_fmt(c.hausdorff95_mm, 1)}</td><td>{_fmt(c.lesion_f1)}</td>"
        f"<td>{sum(1 for x in c.lesions if x.detected)}/{len(c.lesions)}</td><td>{len(c.false_positive_bins)}</td></tr>"
        for c in sorted(result.cases, key=lambda c: c.dice)
    )
    warning = ""
    if model.get("not_for_clinical_use"):
        warning = '<p class="warn">Demo model — not for clinical use.</p>'
    kappa = ""
    if result.responses is not None:
        kappa = (
            f"<p>RANO-BM response agreement over {len(result.responses.pairs)} follow-up visit(s): "
            f"Cohen's kappa {_fmt(result.responses.kappa, 2)}.</p>"
        )
    data_items = "".join(f"<li>{html.escape(str(k))}: {_fmt(v)}</li>" for k, v in data.items())
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>Validation of {html.escape(str(model.get("name")))} {html.escape(str(model.get("version")))}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem; color: #222; max-width: 1100px; }}
table {{ border-collapse: collapse; margin: 1rem 0; }} td, th {{ border: 1px solid #ccc; padding: 4px 8px; }}
th {{ background: #f3f3f3; }} .warn {{ color: #a00; font-weight: bold; }} code {{ font-size: 0.9em; }}
figure.thumb {{ display: inline-block; margin: 0 1rem 1rem 0; }} .key {{ background: #222; padding: 2px 6px; }}
</style></head><body>
<h1>Validation of {html.escape(str(model.get("name")))} {html.escape(str(model.get("version")))}</h1>
{warning}
<p>Created {created:%Y-%m-%d %H:%M} UTC by MetTrack <code>bm-validate</code>.
Weights sha256 <code>{html.escape(str(model.get("weights_sha256")))}</code>,
config sha256 <code>{html.escape(str(model.get("config_sha256")))}</code>.</p>
<h2>Data</h2><ul>{data_items}<li>cases: {len(result.cases)}, patients: {result.n_patients}</li></ul>
<h2>Summary (95 % CI: percentile bootstrap over patients, {result.n_resamples} resamples)</h2>
<table><tr><th>metric</th><th>value</th><th>95 % CI</th></tr>{"".join(rows)}</table>
{kappa}
<h2>Figures</h2>
{"".join(parts)}
{worst_cases_html(result, slices or {})}
<h2>Cases (lowest Dice first)</h2>
<table><tr><th>case</th><th>patient</th><th>Dice</th><th>HD95 (mm)</th><th>lesion F1</th>
<th>detected</th><th>false positives</th></tr>{case_rows}</table>
</body></html>
"""


def _write_csv(path: Path, header: list[str], rows: list[list[Any]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)


def write_report(
    result: ValidationResult,
    out_dir: str | Path,
    *,
    model: dict[str, Any],
    data: dict[str, Any],
    created: dt.datetime | None = None,
    slices: Mapping[str, CaseSlice] | None = None,
) -> dict[str, Path]:
    """Write ``report.html``, ``report.json`` and the CSV tables into ``out_dir``; return their paths.

    ``slices``: case id -> :func:`case_slice`, for the worst cases' thumbnails in the HTML."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    created = created or dt.datetime.now(dt.UTC)
    paths = {name: out / name for name in ("report.html", "report.json")}
    paths["report.html"].write_text(
        render_html(result, model=model, data=data, created=created, slices=slices), encoding="utf-8"
    )
    document = report_document(result, model=model, data=data, created=created)
    paths["report.json"].write_text(json.dumps(document, indent=1, default=str), encoding="utf-8")
    case_fields = [
        "case_id", "patient_id", "visit_date", "dice", "jaccard", "volume_overlap_error",
        "mean_surface_distance_mm", "hausdorff_mm", "hausdorff95_mm", "variation_of_information",
        "cosine_similarity", "lesion_precision", "lesion_recall", "lesion_f1", "reference_volume_mm3",
        "predicted_volume_mm3",
    ]  # fmt: skip
    rows = [[case.to_dict()[name] for name in case_fields] for case in result.cases]
    _write_csv(paths.setdefault("cases.csv", out / "cases.csv"), case_fields, rows)
    lesion_fields = [
        "case_id", "size_bin", "reference_ld_mm", "reference_volume_mm3", "detected", "predicted_ld_mm",
        "predicted_volume_mm3",
    ]  # fmt: skip
    lesion_rows = [
        [getattr(x, name) for name in lesion_fields] for case in result.cases for x in case.lesions
    ]
    _write_csv(paths.setdefault("lesions.csv", out / "lesions.csv"), lesion_fields, lesion_rows)
    aggregate_rows = [
        [key, result.aggregate.get(key), *result.ci95.get(key, (None, None))] for key in result.aggregate
    ]
    _write_csv(
        paths.setdefault("aggregate.csv", out / "aggregate.csv"),
        ["metric", "value", "ci95_low", "ci95_high"],
        aggregate_rows,
    )
    size_fields = [
        "reference_lesions",
        "detected",
        "sensitivity",
        "false_positives",
        "false_positives_per_case",
    ]
    _write_csv(
        paths.setdefault("detection_by_size.csv", out / "detection_by_size.csv"),
        ["size_bin", *size_fields],
        [[name, *(result.detection_by_size[name][f] for f in size_fields)] for name in SIZE_BIN_NAMES],
    )
    if result.responses is not None:
        _write_csv(
            paths.setdefault("responses.csv", out / "responses.csv"),
            ["patient_id", "visit_date", "reference_response", "model_response"],
            [list(pair) for pair in result.responses.pairs],
        )
    return paths


__all__ = [
    "METRIC_ROWS",
    "CaseSlice",
    "case_slice",
    "thumbnail_png",
    "worst_cases_html",
    "bland_altman_figure",
    "confusion_figure",
    "detection_by_size_figure",
    "dice_per_case_figure",
    "figures",
    "render_html",
    "report_document",
    "write_report",
]
