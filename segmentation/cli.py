"""Console entry points: ``bm-segment``, ``bm-export`` and ``bm-train``.

``bm-segment INPUT OUTPUT_DIR [--model DIR] [--device auto|cpu|cuda] [--backend auto|torch|onnx|openvino]``
segments one MRI (a NIfTI file, a
DICOM folder or a zip of one series) and writes into OUTPUT_DIR:

* ``mask.nii.gz``: binary lesion mask (uint8) on the input's grid;
* ``labels.nii.gz``: lesion labels 1..n on the same grid;
* ``lesions.json``: the model (name, label, sha256), the device and backend that ran it, the per-lesion :mod:`rano.measure` records, the
  components the false-positive reduction stage removed (``rejected_components``: features and rule;
  empty when the model config does not enable it), the volume the rim completion stage added to each
  lesion (``rim_completion_added_mm3``, ``{"L1": mm3}``; empty when not enabled), the lesions the
  small-lesion stage added with their features (``small_lesions``, ``{"L4": {...}}``; empty when not
  enabled or none found) and the per-stage timings;
* ``probability.nii`` with ``--probability``: the lesion probability on the same grid, stored as uint16
  with the NIfTI scale ``scl_slope = 1/65535`` (NIfTI readers see float probabilities);
* ``rtstruct.dcm`` and ``seg.dcm`` when the input was DICOM (one ROI/segment per lesion, ``L1``...);
  an enhanced (multi-frame) series gets ``seg.dcm`` only, and a note in ``lesions.json`` and on the
  console says why (an RTSTRUCT references single-frame images).

Per-stage timings are printed. ``bm-segment --self-check`` runs the model on a generated phantom and
reports its Dice against the phantom's ground truth; ``--phantom-style realistic`` draws the harder
phantom (dural sinuses, veins and other distractors, scanner variety, skull; its geometry drawn from
the seed) instead of the basic one the demo model was trained on.

``bm-export MODEL_DIR`` exports a model directory's UNETR to ``model.onnx`` for the CPU backends and
records it (checksum, source weights) in its ``config.json`` (:func:`segmentation.onnx_backend.export_onnx`).

Exit status: 0 success, 1 self-check below ``--min-dice``, 2 bad input or unusable model.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import SimpleITK as sitk

from segmentation.errors import ImagingError, ModelError
from segmentation.model import BACKENDS, LoadedModel
from segmentation.modeldir import DEMO_MODEL_DIR

if TYPE_CHECKING:
    from segmentation.io import LoadedSeries


def _segment_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bm-segment", description="Segment and measure brain metastases on a post-gadolinium 3D T1 MRI."
    )
    p.add_argument("input", nargs="?", type=Path, help="NIfTI file, DICOM folder or zip of one DICOM series")
    p.add_argument(
        "output_dir", nargs="?", type=Path, help="folder for mask.nii.gz, lesions.json, RTSTRUCT, SEG"
    )
    p.add_argument(
        "--model", type=Path, default=DEMO_MODEL_DIR, help="model directory (default: the demo model)"
    )
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument(
        "--backend",
        choices=BACKENDS,
        help="network backend: openvino = OpenVINO, onnx = ONNX Runtime, both on the model's export "
        "(CPU); torch = PyTorch; default: the model config's (auto: openvino on the CPU when the model "
        "has its export)",
    )
    p.add_argument(
        "--threads",
        type=_positive_int,
        help="CPU threads of the openvino or onnx backend (default: all cores)",
    )
    p.add_argument("--no-amp", action="store_true", help="float32 on CUDA instead of bf16 autocast")
    p.add_argument("--compile", action="store_true", help="torch.compile the network (CUDA only)")
    p.add_argument(
        "--sw-batch-size", type=_positive_int, help="windows per forward pass (default: model config)"
    )
    p.add_argument(
        "--overlap", type=_overlap, help="sliding-window overlap in [0, 1) (default: model config)"
    )
    p.add_argument(
        "--threshold", type=_probability, help="probability threshold in (0, 1) (default: model config)"
    )
    p.add_argument("--series-uid", help="Series Instance UID when the DICOM input holds several series")
    p.add_argument(
        "--probability",
        action="store_true",
        help="also write probability.nii: the lesion probability on the input's grid (uint16 scaled by 1/65535)",
    )
    p.add_argument(
        "--overlay-png", action="store_true", help="also write overlay.png: three axial slices with contours"
    )
    p.add_argument(
        "--overlay-slices",
        help="comma-separated axial slice indices for overlay.png (default: through the lesions)",
    )
    p.add_argument(
        "--self-check", action="store_true", help="run the model on a generated phantom, report Dice"
    )
    p.add_argument("--seed", type=int, default=7, help="phantom seed of --self-check")
    p.add_argument(
        "--phantom-style",
        choices=("basic", "realistic"),
        default="basic",
        help="phantom of --self-check: basic (the demo model's training style) or realistic (distractors, "
        "scanner variety)",
    )
    p.add_argument("--min-dice", type=float, default=0.5, help="--self-check fails below this Dice")
    return p


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {text}")
    return value


def _overlap(text: str) -> float:
    value = float(text)
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {text}")
    return value


def _probability(text: str) -> float:
    value = float(text)
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"must be a probability in (0, 1), got {text}")
    return value


def _print_timings(timings: dict[str, float]) -> None:
    for stage, seconds in timings.items():
        print(f"  {stage:<24} {seconds:8.2f} s")
    print(f"  {'total':<24} {sum(timings.values()):8.2f} s")


def _self_check(args: argparse.Namespace) -> int:
    from segmentation.inference import InferenceOptions, segment_image
    from segmentation.model import load_model
    from segmentation.phantoms import make_phantom
    from segmentation.train import dice_score, lesion_counts

    model = load_model(args.model, backend=args.backend)
    # The basic phantom on the 1 mm axial grid; the realistic one on the geometry its seed draws.
    geometry = "axial_1mm" if args.phantom_style == "basic" else None
    phantom = make_phantom(
        args.seed, n_lesions=4, diameter_range_mm=(6.0, 30.0), geometry=geometry, style=args.phantom_style
    )
    options = InferenceOptions(device=args.device, backend=args.backend, threads=args.threads)
    result = segment_image(phantom.image, model, options)
    pred = sitk.GetArrayFromImage(result.mask)
    truth = sitk.GetArrayFromImage(phantom.mask)
    dice = dice_score(pred, truth)
    counts = lesion_counts(pred, truth, phantom.image.GetSpacing())
    print(f"model {model.config.name} {model.config.version} ({model.config.label}) on {result.runtime}")
    print(f"phantom seed {args.seed}, style {args.phantom_style}: {len(phantom.lesions)} lesions, "
          f"geometry {phantom.geometry.name}")  # fmt: skip
    print(f"Dice {dice:.3f}; lesion F1 {counts.f1:.3f} (found {counts.true_positive}, missed {counts.false_negative}, "
          f"false positives {counts.false_positive}); predicted {len(result.lesions)} lesions")  # fmt: skip
    _print_timings(result.timings_s)
    ok = dice >= args.min_dice
    print("self-check " + ("passed" if ok else f"FAILED (Dice below {args.min_dice})"))
    return 0 if ok else 1


def segment_main(argv: Sequence[str] | None = None) -> int:
    """``bm-segment``: see the module docstring. Returns the exit status."""
    args = _segment_parser().parse_args(argv)
    try:
        if args.self_check:
            return _self_check(args)
        if args.input is None or args.output_dir is None:
            print("bm-segment: INPUT and OUTPUT_DIR are required (or --self-check)", file=sys.stderr)
            return 2
        return _segment(args)
    except (ImagingError, ModelError, ValueError) as exc:
        message = getattr(exc, "user_message", None) or str(exc)
        print(f"bm-segment: error: {type(exc).__name__}: {message}", file=sys.stderr)
        return 2


def _write_dicom_outputs(
    labels: sitk.Image, series: LoadedSeries, model: LoadedModel, out: Path, notes: list[str]
) -> list[str]:
    """The SEG and RTSTRUCT of the lesions of a DICOM input (file names written; ``notes`` says what not)."""
    from segmentation.contours import write_rtstruct, write_seg

    values = [int(v) for v in np.unique(sitk.GetArrayViewFromImage(labels)) if v > 0]
    if not values:
        notes.append("no lesion found: no RTSTRUCT/SEG written")
        return []
    names = {v: f"L{v}" for v in values}
    write_seg(
        labels, series, out / "seg.dcm", lesion_names=names,
        algorithm_name=model.config.name, algorithm_version=model.config.algorithm_version(),
        algorithm_parameters={"weights_sha256": model.config.weights_sha256, "label": model.config.label},
    )  # fmt: skip
    written = ["seg.dcm"]
    if series.info.is_multiframe:
        notes.append(
            "RTSTRUCT not written: an RTSTRUCT references single-frame images and this series is one "
            "enhanced (multi-frame) image; seg.dcm holds the same lesions"
        )
    elif series.info.missing_rtstruct_attributes:
        notes.append(
            "RTSTRUCT not written: the series lacks " + ", ".join(series.info.missing_rtstruct_attributes)
        )
    else:
        write_rtstruct(
            labels, series, out / "rtstruct.dcm", lesion_names=names, provenance=model.config.provenance()
        )
        written.append("rtstruct.dcm")
    return written


def _segment(args: argparse.Namespace) -> int:
    from segmentation.inference import InferenceOptions, segment_image
    from segmentation.io import read_series
    from segmentation.model import load_model
    from segmentation.probability import write_nifti as write_probability_nifti

    out = Path(args.output_dir)
    try:  # before minutes of inference, not after
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ValueError(f"cannot create the output folder {out}: {exc.strerror or exc}") from exc
    timings: dict[str, float] = {}
    t = time.perf_counter()
    model = load_model(args.model, backend=args.backend)
    timings["load_model"] = time.perf_counter() - t
    t = time.perf_counter()
    series = read_series(args.input, series_uid=args.series_uid, require_rtstruct_attributes=False)
    timings["read"] = time.perf_counter() - t
    options = InferenceOptions(
        device=args.device,
        amp=not args.no_amp,
        compile=args.compile,
        sw_batch_size=args.sw_batch_size,
        overlap=args.overlap,
        threshold=args.threshold,
        backend=args.backend,
        threads=args.threads,
        keep_probability=args.probability,
    )
    result = segment_image(series.image, model, options)
    timings.update(result.timings_s)

    t = time.perf_counter()
    sitk.WriteImage(result.mask, str(out / "mask.nii.gz"), useCompression=True)
    sitk.WriteImage(result.labels, str(out / "labels.nii.gz"), useCompression=True)
    written = ["mask.nii.gz", "labels.nii.gz", "lesions.json"]
    if result.probability is not None:
        # uint16 with the NIfTI scale 1/65535 (readers see the probability); uncompressed: gzip of a
        # whole-head map takes seconds.
        write_probability_nifti(result.probability, out / "probability.nii")
        written.append("probability.nii")
    notes: list[str] = []
    if series.info.source_format == "dicom":
        written += _write_dicom_outputs(result.labels, series, model, out, notes)
    if args.overlay_png:
        slices = [int(v) for v in args.overlay_slices.split(",")] if args.overlay_slices else None
        write_overlay_png(series.image, result.mask, out / "overlay.png", slices)
        written.append("overlay.png")
    timings["write"] = time.perf_counter() - t
    report = {
        "input": str(args.input),
        "model": {
            "name": model.config.name,
            "version": model.config.version,
            "label": model.config.label,
            "weights_sha256": model.config.weights_sha256,
            "parameters": model.n_parameters,
        },
        "device": result.device,
        "backend": result.backend,
        "n_windows": result.n_windows,
        "n_windows_skipped": result.n_windows_skipped,
        "lesions": [m.to_dict() for m in result.lesions],
        "rejected_components": [r.to_dict() for r in result.rejected],
        "rim_completion_added_mm3": {f"L{k}": round(v, 1) for k, v in sorted(result.rim_added_mm3.items())},
        "small_lesions": {f"L{k}": c.to_dict() for k, c in sorted(result.small_lesions.items())},
        "timings_s": {k: round(v, 3) for k, v in timings.items()},
        "notes": notes,
    }
    (out / "lesions.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    label = f" ({model.config.label})" if model.config.label else ""
    print(
        f"model {model.config.name} {model.config.version}{label} on {result.runtime}, {result.n_windows} windows"
    )
    print(f"{len(result.lesions)} lesions; wrote {', '.join(written)} to {out}")
    for m in result.lesions:
        print(f"  L{m.label}: LD {m.longest_diameter_mm:.1f} mm x {m.perpendicular_diameter_mm:.1f} mm, "
              f"volume {m.volume_mm3:.0f} mm3, centroid {tuple(round(c, 1) for c in m.centroid_mm)}"
              f"{' (small-lesion stage)' if m.label in result.small_lesions else ''}")  # fmt: skip
    for r in result.rejected:
        f = r.features
        why = r.reason if r.probability is None else f"{r.reason}, lesion probability {r.probability:.2f}"
        print(f"  rejected ({why}): volume {f.volume_mm3:.0f} mm3, centroid "
              f"{tuple(round(c, 1) for c in f.centroid_mm)}")  # fmt: skip
    for n in notes:
        print(f"note: {n}")
    print("timings:")
    _print_timings(timings)
    return 0


def write_overlay_png(
    image: sitk.Image, mask: sitk.Image, path: Path, slices: Sequence[int] | None = None
) -> Path:
    """Three axial slices (RAS-reoriented, radiological display: patient right on the image left) with the
    mask outline in red. Default slices: quartiles of the lesion extent, or the middle of the volume."""
    from PIL import Image

    img = sitk.GetArrayFromImage(sitk.DICOMOrient(image, "LPS")).astype(np.float32)
    msk = sitk.GetArrayFromImage(sitk.DICOMOrient(mask, "LPS")) > 0
    if slices is None:
        zs = np.flatnonzero(msk.any(axis=(1, 2)))
        if len(zs):
            slices = [int(np.percentile(zs, q)) for q in (25, 50, 75)]
        else:
            slices = [img.shape[0] * k // 4 for k in (1, 2, 3)]
    hi = float(np.percentile(img, 99.5)) or 1.0
    tiles = []
    for z in slices:
        z = int(np.clip(z, 0, img.shape[0] - 1))
        gray = np.clip(img[z] / hi, 0, 1)
        rgb = np.stack([gray] * 3, axis=-1)
        m = msk[z]
        interior = m.copy()
        interior[1:-1, 1:-1] = m[1:-1, 1:-1] & m[:-2, 1:-1] & m[2:, 1:-1] & m[1:-1, :-2] & m[1:-1, 2:]
        rgb[m & ~interior] = (1.0, 0.1, 0.1)
        # LPS arrays run anterior at the top and patient right on the left (radiological view).
        tiles.append(rgb)
    Image.fromarray((np.concatenate(tiles, axis=1) * 255).astype(np.uint8)).save(path)
    return path


def _export_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bm-export",
        description="Export a model directory's UNETR to model.onnx for the CPU backends (OpenVINO, ONNX "
        "Runtime), check it against PyTorch with each, and record its sha256 and source weights in "
        "config.json. Run it again whenever weights.pt changes.",
    )
    p.add_argument("model_dir", type=Path, help="model directory (config.json + weights.pt)")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    return p


def export_main(argv: Sequence[str] | None = None) -> int:
    """``bm-export MODEL_DIR``: see :func:`segmentation.onnx_backend.export_onnx`. Returns the exit status."""
    args = _export_parser().parse_args(argv)
    from segmentation.onnx_backend import EXPORT_TOLERANCE, export_onnx

    try:
        t = time.perf_counter()
        record = export_onnx(args.model_dir, opset=args.opset)
    except (ModelError, OSError) as exc:
        print(f"bm-export: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {args.model_dir / record.file} (sha256 {record.sha256}) in {time.perf_counter() - t:.1f} s")
    print(f"  from weights sha256 {record.weights_sha256}, opset {record.opset}")
    for runtime, diff in record.extra.get("max_abs_diff_by_runtime", {}).items():
        print(
            f"  max |probability difference| vs PyTorch, {runtime}: {diff:.2e} (tolerance {EXPORT_TOLERANCE:g})"
        )
    return 0


def train_main(argv: Sequence[str] | None = None) -> int:
    """``bm-train``: see :mod:`segmentation.train`."""
    from segmentation.train import main

    return main(argv)


if __name__ == "__main__":
    raise SystemExit(segment_main())
