"""``bm-validate``: validate a model directory against reference contours.

    bm-validate OUTPUT_DIR (--data DIR | --dicom DIR [--roi-pattern 'GTV*']
                | --phantoms N [--seed S] [--phantom-style basic|realistic|mixed])
                [--model DIR] [--visits VISITS.json [--register]] [--device auto|cpu|cuda] [--backend auto|torch|onnx|openvino]
                [--resamples N] [--min-lesion-volume-mm3 V]

Cases are read as ``bm-train`` reads them (:func:`segmentation.train.nifti_pair_sources`,
:func:`~segmentation.train.phantom_sources`; DICOM: :func:`dicom_reference_sources`, an MR series with
its RTSTRUCT or DICOM SEG, ROIs or segments chosen by name pattern), each
image is segmented by :func:`segmentation.inference.segment_image` (the production path: preprocessing,
sliding window, postprocessing, back on the native grid), and the masks are compared with
:func:`rano.validation.validate`. ``--visits`` (``{"CASE_ID": {"patient": "P1", "date": "2025-01-06"}}``)
makes cases longitudinal: the RANO-BM responses from the model's masks are compared with those from the
reference masks. OUTPUT_DIR receives ``report.html`` (self-contained), ``report.json`` and CSV tables
(:mod:`segmentation.validation_report`), and ``masks/<case>_model.nii.gz``, the model's mask of each case;
the model's weights and config checksums are in both reports.

Exit status: 0 success, 2 bad input or unusable model.
"""

from __future__ import annotations

import argparse
import datetime as dt
import fnmatch
import json
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from rano.errors import RanoError
from rano.validation import ValidationCase, validate
from segmentation.errors import ImagingError, ModelError
from segmentation.model import BACKENDS
from segmentation.modeldir import DEMO_MODEL_DIR, config_sha256
from segmentation.phantoms import PHANTOM_SET_STYLES


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bm-validate",
        description="Validate a segmentation model against reference lesion masks (HTML, JSON, CSV report).",
    )
    p.add_argument("output_dir", type=Path, help="folder for report.html, report.json and the CSV tables")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", type=Path, help="folder of <name>_t1c.nii.gz + <name>_mask.nii.gz pairs")
    src.add_argument(
        "--dicom", type=Path, help="one sub-folder per case: an MR series and its RTSTRUCT or DICOM SEG"
    )
    src.add_argument("--phantoms", type=int, help="N synthetic held-out phantoms (segmentation.phantoms)")
    p.add_argument(
        "--roi-pattern", default="GTV*", help="ROI names / segment labels that are lesions (fnmatch)"
    )
    p.add_argument("--seed", type=int, default=20261206, help="phantom seed (keep it off the training seed)")
    p.add_argument(
        "--phantom-style",
        choices=PHANTOM_SET_STYLES,
        default="basic",
        help="with --phantoms: basic (the demo model's training style), realistic (dural sinuses, falx, "
        "veins, scanner variety: segmentation.phantom_realism) or mixed (alternate patients)",
    )
    p.add_argument("--model", type=Path, default=DEMO_MODEL_DIR, help="model directory (default: demo)")
    p.add_argument("--visits", type=Path, help='JSON {"CASE": {"patient": "P1", "date": "YYYY-MM-DD"}}')
    p.add_argument(
        "--register",
        action="store_true",
        help="register follow-ups to baseline for the responses (default: the visits share one space)",
    )
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--backend", choices=BACKENDS)
    p.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples (patients)")
    p.add_argument(
        "--min-lesion-volume-mm3", type=float, help="components under this are ignored (default: the model's)"
    )
    return p


def safe_name(case_id: str) -> str:
    """A case id as a file name (anything but letters, digits, ``.``, ``_`` and ``-`` replaced)."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", case_id)


def dicom_reference_sources(directory: str | Path, roi_pattern: str = "GTV*") -> list[Any]:
    """One case per sub-folder holding an MR series and its reference contours, an RTSTRUCT or a DICOM
    SEG; the ROIs (segments) whose name (label) matches ``roi_pattern`` (fnmatch) are merged into the
    lesion mask. The patient id is the DICOM PatientID (pseudonymous in a de-identified export).

    Raises:
        ValueError: a folder has neither RTSTRUCT nor SEG, or no ROI or segment matches the pattern.
    """
    import pydicom

    from segmentation.train import CaseSource

    root = Path(directory)
    if not root.is_dir():
        raise ValueError(f"{root} is not a folder")
    out = []
    for case_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        references: list[tuple[str, Path]] = []
        patient = ""
        for f in sorted(x for x in case_dir.rglob("*") if x.is_file()):
            try:
                ds = pydicom.dcmread(f, stop_before_pixels=True, specific_tags=["Modality", "PatientID"])
            except Exception:  # not DICOM: ignored, as a PACS export folder may hold other files
                continue
            modality = str(getattr(ds, "Modality", ""))
            if modality in ("RTSTRUCT", "SEG"):
                references.append((modality, f))
            patient = patient or str(getattr(ds, "PatientID", "") or "")
        if not references:
            raise ValueError(f"no RTSTRUCT or SEG in {case_dir}")

        def _load(d: Path = case_dir, ref: tuple[str, Path] = references[0]) -> tuple[sitk.Image, sitk.Image]:
            from segmentation.contours import read_rtstruct, read_seg
            from segmentation.io import read_series

            series = read_series(d, require_rtstruct_attributes=False)
            modality, path = ref
            contours = read_rtstruct(path, series) if modality == "RTSTRUCT" else read_seg(path, series)
            values = [v for v, n in contours.names.items() if fnmatch.fnmatch(n, roi_pattern)]
            if not values:
                raise ValueError(
                    f"no ROI in {path.name} matches {roi_pattern!r} (ROIs: {', '.join(contours.names.values())})"
                )
            labels = sitk.GetArrayViewFromImage(contours.labels)
            mask = sitk.GetImageFromArray(np.isin(labels, values).astype(np.uint8))
            mask.CopyInformation(series.image)
            return series.image, mask

        out.append(CaseSource(case_id=case_dir.name, patient_id=patient or case_dir.name, load=_load))
    if not out:
        raise ValueError(f"no case folders in {root}")
    return out


def _visits(path: Path | None) -> dict[str, tuple[str, dt.date]]:
    if path is None:
        return {}
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        return {case: (str(v["patient"]), dt.date.fromisoformat(str(v["date"]))) for case, v in raw.items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"--visits {path}: {exc}") from exc


def model_identity(directory: Path) -> dict[str, Any]:
    """Name, version, label and both checksums of a model directory (what the report certifies)."""
    from segmentation.model import read_config

    cfg = read_config(directory)
    return {
        "name": cfg.name,
        "version": cfg.version,
        "label": cfg.label,
        "weights_sha256": cfg.weights_sha256,
        "config_sha256": config_sha256(cfg.to_dict()),
        "not_for_clinical_use": "not for clinical use" in cfg.label.lower() or "demo" in cfg.name.lower(),
        "intended_use": cfg.intended_use,
    }


def run(args: argparse.Namespace) -> dict[str, Path]:
    """Segment every case with the model, validate, write the report. Returns the written files."""
    from segmentation.inference import InferenceOptions, segment_image
    from segmentation.model import load_model
    from segmentation.train import nifti_pair_sources, phantom_sources
    from segmentation.validation_report import case_slice, write_report

    visits = _visits(args.visits)
    backend = None if args.backend in (None, "auto") else args.backend
    model = load_model(args.model, backend=backend)
    if args.data is not None:
        sources, described = (
            nifti_pair_sources(args.data),
            {"source": "NIfTI pairs", "folder": args.data.name},
        )
    elif args.dicom is not None:
        sources = dicom_reference_sources(args.dicom, args.roi_pattern)
        described = {
            "source": "DICOM + RTSTRUCT or SEG",
            "folder": args.dicom.name,
            "roi_pattern": args.roi_pattern,
        }
    else:
        sources = phantom_sources(args.phantoms, args.seed, args.phantom_style)
        described = {
            "source": "synthetic phantoms (held out)",
            "seed": args.seed,
            "style": args.phantom_style,
        }
    cases = []
    slices = {}
    started = time.perf_counter()
    masks_dir = Path(args.output_dir) / "masks"
    masks_dir.mkdir(parents=True, exist_ok=True)
    for source in sources:
        image, reference = source.load()
        result = segment_image(image, model, InferenceOptions(device=args.device, backend=backend))
        patient, date = visits.get(source.case_id, (source.patient_id, None))
        kept_image = image if args.register else None
        cases.append(ValidationCase(source.case_id, reference, result.mask, patient, date, kept_image))
        slices[source.case_id] = case_slice(image, reference, result.mask)
        # The model's mask of each case, for a reader to check any number of the report.
        sitk.WriteImage(result.mask, str(masks_dir / f"{safe_name(source.case_id)}_model.nii.gz"))
        print(f"{source.case_id}: {len(result.lesions)} lesion(s) found", file=sys.stderr)
    min_volume = (
        args.min_lesion_volume_mm3
        if args.min_lesion_volume_mm3 is not None
        else model.config.postprocessing.min_lesion_volume_mm3
    )
    outcome = validate(cases, min_lesion_volume_mm3=min_volume, n_resamples=args.resamples)
    data = {
        **described,
        "cases": len(cases),
        "min_lesion_volume_mm3": min_volume,
        "device": args.device,
        "seconds": round(time.perf_counter() - started, 1),
    }
    return write_report(
        outcome, args.output_dir, model=model_identity(Path(args.model)), data=data, slices=slices
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        paths = run(args)
    except (ImagingError, ModelError, RanoError, ValueError, OSError) as exc:
        print(f"bm-validate: {exc}", file=sys.stderr)
        return 2
    print(f"report: {paths['report.html']}")
    return 0


__all__ = ["dicom_reference_sources", "main", "model_identity", "run"]


if __name__ == "__main__":  # python -m segmentation.validate (where bm-validate is not installed)
    sys.exit(main())
