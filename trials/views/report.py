"""The RANO-BM report of one visit: a printable page and the same report as PDF.

What a site files with the case report form: the patient (subject id only), the visit, the response
with the rules' reasons, the AI's own answer beside it, the target and non-target tables with their
measurements and change, key images (each measured lesion on its LD slice with its contour and its
calipers: LD red, perpendicular orange), the model version, and the reader's e-signature.

The PDF is drawn by ReportLab (a maintained PDF library; no browser needed on the server). Both are
built from :class:`VisitReport`, which reads the visit as the patient timeline does.
"""

from __future__ import annotations

import base64
import datetime as dt
import io
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.utils import timezone
from django.views.decorators.http import require_GET
from PIL import Image, ImageDraw

from trials.actions.accounts import record_download
from trials.exceptions import MissingImageError
from trials.models import Timepoint
from trials.storage import observation_mask_source, stored_name
from trials.views.common import timepoint_for
from trials.views.imaging import (
    CachedVolume,
    contour_segments,
    load_volume,
    physical_to_index,
    window_slice,
)
from trials.views.queries import LesionRow, VisitRow, patient_timeline
from trials.views.viewer import lesion_slice

#: Key images at most (targets first, then new and non-target lesions).
MAX_KEY_IMAGES = 8
#: Pixels per voxel in the key images (nearest neighbour: the voxels stay visible).
ZOOM = 3
LD_COLOUR, PERPENDICULAR_COLOUR, CONTOUR_COLOUR = (230, 30, 30), (255, 150, 0), (255, 230, 0)


@dataclass(frozen=True)
class KeyImage:
    """One lesion on its LD slice, as a PNG."""

    label: str
    category: str
    k: int
    png: bytes

    @property
    def data_uri(self) -> str:
        """The PNG inline, for the printable page (the CSP allows ``data:`` images)."""
        return "data:image/png;base64," + base64.b64encode(self.png).decode("ascii")


@dataclass
class VisitReport:
    """Everything the report shows, gathered once."""

    row: VisitRow
    generated_at: dt.datetime
    images: list[KeyImage] = field(default_factory=list)

    @property
    def timepoint(self) -> Timepoint:
        return self.row.timepoint

    def lesions(self, *categories: str) -> list[LesionRow]:
        """The visit's lesions of the given categories (target, non-target, new, dropped)."""
        return [r for r in self.row.lesions if r.category in categories]


def _key_image(volume: CachedVolume, lesion_row: LesionRow) -> KeyImage | None:
    """The lesion's LD slice with its contour and calipers, or None without a caliper."""
    obs = lesion_row.observation
    if obs is None or not obs.present or not obs.caliper_points_mm:
        return None
    k = lesion_slice(volume, obs)
    if k is None or not 0 <= k < volume.array.shape[0]:
        return None
    grey = window_slice(volume, k, None, None)
    image = Image.fromarray(np.repeat(np.repeat(grey, ZOOM, axis=0), ZOOM, axis=1)).convert("RGB")
    draw = ImageDraw.Draw(image)
    source = observation_mask_source(obs)
    if source is not None:
        try:
            labels = load_volume(source[0], labels=True)
        except (MissingImageError, RuntimeError, OSError):
            labels = None
        if labels is not None and labels.array.shape == volume.array.shape:
            for x0, y0, x1, y1 in contour_segments(labels.array[k] == source[1]):
                draw.line([(x0 * ZOOM, y0 * ZOOM), (x1 * ZOOM, y1 * ZOOM)], fill=CONTOUR_COLOUR, width=1)
    for points, colour in (
        (obs.perpendicular_points_mm, PERPENDICULAR_COLOUR),
        (obs.caliper_points_mm, LD_COLOUR),
    ):
        if points:
            a, b = (physical_to_index(volume, p) for p in points)
            # +0.5: a voxel centre sits in the middle of its pixel square.
            draw.line(
                [((a[0] + 0.5) * ZOOM, (a[1] + 0.5) * ZOOM), ((b[0] + 0.5) * ZOOM, (b[1] + 0.5) * ZOOM)],
                fill=colour,
                width=2,
            )
    out = io.BytesIO()
    image.save(out, format="PNG", optimize=True)
    return KeyImage(lesion_row.lesion.label, lesion_row.category, k, out.getvalue())


def build_visit_report(timepoint: Timepoint) -> VisitReport:
    """The report of ``timepoint`` as it stands now (the current assessment and lesions)."""
    rows = patient_timeline(timepoint.patient)
    row = next(r for r in rows if r.timepoint.pk == timepoint.pk)
    report = VisitReport(row=row, generated_at=timezone.now())
    series = next((s for s in row.series if s.volume_file), None)
    if series is None:
        return report
    try:
        volume = load_volume(stored_name(series.volume_file))
    except (MissingImageError, RuntimeError, OSError):
        return report
    order = {"target": 0, "new": 1, "non-target": 2}
    for lesion_row in sorted(
        (r for r in row.lesions if r.category in order), key=lambda r: order[r.category]
    ):
        image = _key_image(volume, lesion_row)
        if image is not None:
            report.images.append(image)
        if len(report.images) >= MAX_KEY_IMAGES:
            break
    return report


# ----------------------------------------------------------------------------------------------- PDF


def _cell(value: Any, digits: int = 1) -> str:
    if value is None or value == "":
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def render_pdf(report: VisitReport) -> bytes:
    """The report as an A4 PDF (ReportLab's platypus: flowing paragraphs, tables and images)."""
    from reportlab.lib import colors
    from reportlab.lib.pagesizes import A4
    from reportlab.lib.styles import getSampleStyleSheet
    from reportlab.lib.units import mm
    from reportlab.platypus import Image as PdfImage
    from reportlab.platypus import Paragraph, SimpleDocTemplate, Spacer, Table, TableStyle

    styles = getSampleStyleSheet()
    tp = report.timepoint
    a, ai = report.row.assessment, report.row.ai_assessment
    story: list[Any] = [
        Paragraph(f"RANO-BM report: {tp.patient.subject_id}, {tp.visit_label}", styles["Title"]),
        Paragraph(
            f"Trial {tp.patient.trial.code} · scan {tp.scan_date:%Y-%m-%d}"
            + (" (baseline)" if tp.is_baseline else ""),
            styles["Normal"],
        ),
        Spacer(1, 4 * mm),
    ]
    summary = [["Overall response", "AI's answer", "Targets", "Non-targets", "New lesions", "SLD (mm)"]]
    if a is not None:
        summary.append(
            [
                "baseline" if tp.is_baseline else _cell(a.overall_response),
                "baseline" if tp.is_baseline else _cell(ai.overall_response if ai else ""),
                _cell(a.target_response),
                _cell(a.non_target_response),
                a.get_new_lesion_status_display(),
                _cell(a.sum_ld_mm),
            ]
        )
    story.append(_table(summary, colors, TableStyle))
    if a is not None:
        story.append(Spacer(1, 2 * mm))
        story.append(
            Paragraph(
                f"Baseline SLD {_cell(a.baseline_sum_ld_mm)} mm, nadir {_cell(a.nadir_sum_ld_mm)} mm; change "
                f"from baseline {_cell(a.pct_change_from_baseline)} %, from nadir {_cell(a.pct_change_from_nadir)} %; "
                f"best response so far {_cell(a.best_overall_response)}.",
                styles["Normal"],
            )
        )
        story.append(Paragraph("Why (rule outcomes)", styles["Heading3"]))
        story.extend(Paragraph(f"• {reason}", styles["Normal"]) for reason in a.reasons or ["–"])
    for title, categories in (
        ("Target lesions", ("target",)),
        ("Non-target and new lesions", ("non-target", "new")),
    ):
        story.append(Paragraph(title, styles["Heading3"]))
        lines = [["Lesion", "Category", "LD (mm)", "Perpendicular (mm)", "Volume (mm³)", "LD change (mm)"]]
        for r in report.lesions(*categories):
            obs = r.observation
            lines.append(
                [
                    r.lesion.label,
                    r.category,
                    _cell(obs.longest_diameter_mm if obs and obs.present else 0.0),
                    _cell(obs.perpendicular_diameter_mm if obs and obs.present else None),
                    _cell(obs.volume_mm3 if obs and obs.present else None, 0),
                    _cell(r.change_mm),
                ]
            )
        story.append(
            _table(lines, colors, TableStyle) if len(lines) > 1 else Paragraph("None.", styles["Normal"])
        )
    if report.images:
        story.append(
            Paragraph("Key images (LD red, perpendicular orange, contour yellow)", styles["Heading3"])
        )
        cells: list[list[Any]] = []  # each cell: the image over its caption
        for image in report.images:
            width, height = Image.open(io.BytesIO(image.png)).size
            scale = 55 * mm / max(width, height)
            cells.append(
                [
                    PdfImage(io.BytesIO(image.png), width=width * scale, height=height * scale),
                    Paragraph(f"{image.label} ({image.category}), slice {image.k}", styles["Normal"]),
                ]
            )
        story.append(Table([cells[i : i + 3] for i in range(0, len(cells), 3)]))
    story.append(Spacer(1, 4 * mm))
    story.append(Paragraph(_provenance(report), styles["Normal"]))
    out = io.BytesIO()
    SimpleDocTemplate(
        out,
        pagesize=A4,
        title=f"RANO-BM report {tp.patient.subject_id} {tp.visit_label}",
        author="MetTrack",
        leftMargin=15 * mm,
        rightMargin=15 * mm,
        topMargin=15 * mm,
        bottomMargin=15 * mm,
    ).build(story)
    return out.getvalue()


def _table(rows: list[list[Any]], colors: Any, table_style: Any) -> Any:
    from reportlab.platypus import Table

    table = Table(rows, repeatRows=1)
    table.setStyle(
        table_style(
            [
                ("GRID", (0, 0), (-1, -1), 0.4, colors.grey),
                ("BACKGROUND", (0, 0), (-1, 0), colors.Color(0.92, 0.92, 0.92)),
                ("FONTSIZE", (0, 0), (-1, -1), 8.5),
            ]
        )
    )
    return table


def _provenance(report: VisitReport) -> str:
    a = report.row.assessment
    parts = []
    if a is not None:
        model = a.model_version or (
            report.row.ai_assessment.model_version if report.row.ai_assessment else None
        )
        parts.append(f"Assessment: {a.get_source_display()}, engine {a.engine_version or '–'}")
        if model is not None:
            parts.append(f"model {model.name} {model.version}")
        if a.signed_by is not None and a.signed_at is not None:
            parts.append(
                f"signed by {a.signed_by.get_username()} on {a.signed_at:%Y-%m-%d %H:%M:%S} UTC "
                f"({a.get_signature_meaning_display()})"
            )
        else:
            parts.append("not signed: pending review")
    parts.append(f"report generated {report.generated_at:%Y-%m-%d %H:%M:%S} UTC")
    return "; ".join(parts) + "."


# --------------------------------------------------------------------------------------------- views


@require_GET
@login_required
def visit_report(request: HttpRequest, timepoint_id: int) -> HttpResponse:
    """The printable report page of a visit (members of its trial)."""
    timepoint = timepoint_for(request.user, timepoint_id)
    report = build_visit_report(timepoint)
    return render(
        request,
        "dashboard/report.html",
        {
            "report": report,
            "trial": timepoint.patient.trial,
            "provenance": _provenance(report),
            "target_rows": report.lesions("target"),
            "other_rows": report.lesions("non-target", "new"),
        },
    )


@require_GET
@login_required
def visit_report_pdf(request: HttpRequest, timepoint_id: int) -> HttpResponse:
    """The report as PDF; the download is audited."""
    timepoint = timepoint_for(request.user, timepoint_id)
    return report_pdf_response(timepoint, request.user, getattr(request, "correlation_id", ""))


def report_pdf_response(timepoint: Timepoint, user: Any, correlation_id: str) -> HttpResponse:
    """The PDF of a visit's report as a download, audited (the dashboard and the API both answer it)."""
    pdf = render_pdf(build_visit_report(timepoint))
    record_download(timepoint, kind="report.pdf", actor=user, correlation_id=correlation_id)
    response = HttpResponse(pdf, content_type="application/pdf")
    name = f"rano-bm-report-{timepoint.patient.subject_id}-{timepoint.visit_label}.pdf"
    safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in name)
    response["Content-Disposition"] = f'attachment; filename="{safe}"'
    return response
