"""Segmentation speed and memory: ``python -m bench segmentation``.

1. CPU: ``bm-segment`` with the shipped demo model on the real MRI (../shared/data BraTS-MET-00110-000
   t1c), end to end in a child process; wall time, peak resident memory, per-stage times.
   Targets: < 60 s, < 4 GB.
2. CPU: the paper-size UNETR (in 1, out 2, feature 16, hidden 768: 92.8M parameters, random weights)
   at 1 mm on the same MRI, end to end. Target: < 120 s.
3. GPU (only when CUDA is present, otherwise reported as skipped): the paper-size UNETR on a synthetic
   512 x 512 x 208, 0.5 x 0.5 x 1 mm DICOM series, end to end (read, preprocess, network, postprocess,
   RTSTRUCT) with bf16 and batched windows; the network step alone; and MONAI's default
   sliding-window settings (sw_batch_size 1, constant blending, float32) on the same input and card.

Set ``METTRACK_MRI`` to use another image for 1 and 2.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MRI = ROOT.parent / "shared" / "data" / "BraTS-MET-00110-000-t1c.nii.gz"


def paper_config(spacing_mm: float = 1.0) -> dict:
    """Config of the paper-size UNETR (ViT-B encoder), 96^3 windows at ``spacing_mm``."""
    from segmentation.preprocess import PreprocessConfig

    return {
        "name": "paper-size-unetr-random",
        "version": "bench",
        "label": "random weights, for timing only",
        "architecture": {
            "name": "UNETR",
            "in_channels": 1,
            "out_channels": 2,
            "img_size": [96, 96, 96],
            "feature_size": 16,
            "hidden_size": 768,
            "mlp_dim": 3072,
            "num_heads": 12,
            "proj_type": "conv",
            "norm_name": "instance",
            "res_block": True,
            "dropout_rate": 0.0,
        },  # fmt: skip
        "preprocessing": PreprocessConfig(spacing_mm=(spacing_mm,) * 3, n4_shrink_factor=4).to_dict(),
        "inference": {"roi_size": [96, 96, 96], "sw_batch_size": 4, "overlap": 0.25, "mode": "gaussian"},
        "postprocessing": {"threshold": 0.5, "min_lesion_volume_mm3": 5.0},
    }


def make_paper_model(directory: Path) -> Path:
    """A model directory holding the paper-size UNETR with random (seeded) weights."""
    import torch

    from segmentation.model import ModelConfig, build_network, save_model_dir

    torch.manual_seed(0)
    cfg = ModelConfig.from_dict(paper_config())
    return save_model_dir(build_network(cfg), cfg, directory)


def run_bm_segment(mri: Path, model: Path, out: Path, *extra: str) -> dict:
    """Run bm-segment in a child process; wall time, peak RSS of the child, and its lesions.json."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "segmentation.cli", str(mri), str(out), "--model", str(model), *extra],
        capture_output=True, text=True, cwd=ROOT, check=False,
    )  # fmt: skip
    wall = time.perf_counter() - t
    peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if proc.returncode != 0:
        raise RuntimeError(f"bm-segment failed ({proc.returncode}): {proc.stderr[-2000:]}")
    report = json.loads((out / "lesions.json").read_text())
    return {
        "wall_s": wall,
        # ru_maxrss of children is the largest child so far: valid when this is the biggest run yet.
        "peak_rss_gb": max(peak_kb, before) / 1024**2,
        "report": report,
        "stdout": proc.stdout,
    }


def _print_run(title: str, run: dict, budget_s: float, budget_gb: float | None = None) -> None:
    rep = run["report"]
    print(
        f"{title}: {run['wall_s']:.1f} s end to end (budget {budget_s:.0f} s, ratio {run['wall_s'] / budget_s:.2f})"
    )
    if budget_gb is not None:
        print(
            f"  peak RSS {run['peak_rss_gb']:.2f} GB (budget {budget_gb:.0f} GB, ratio {run['peak_rss_gb'] / budget_gb:.2f})"
        )
    print(f"  model {rep['model']['name']} ({rep['model']['parameters'] / 1e6:.1f}M parameters), "
          f"{rep['n_windows']} windows, device {rep['device']}, {len(rep['lesions'])} lesions")  # fmt: skip
    for stage, sec in rep["timings_s"].items():
        print(f"    {stage:<24} {sec:8.2f} s")


def cpu_benchmarks(mri: Path) -> None:
    from segmentation.modeldir import DEMO_MODEL_DIR

    with tempfile.TemporaryDirectory(prefix="bench-seg-") as tmp:
        tmpd = Path(tmp)
        if (DEMO_MODEL_DIR / "config.json").is_file():
            demo = run_bm_segment(mri, DEMO_MODEL_DIR, tmpd / "demo", "--device", "cpu")
            _print_run("CPU demo model on the real MRI", demo, 60.0, 4.0)
            big = max(demo["report"]["lesions"], key=lambda m: m["volume_mm3"], default=None)
            if big:
                print(f"  largest lesion: LD {big['longest_diameter_mm']:.1f} mm, volume {big['volume_mm3'] / 1000:.1f} ml, "
                      f"centroid {[round(c, 1) for c in big['centroid_mm']]}")  # fmt: skip
        else:
            print("CPU demo model: skipped (no segmentation/models/demo-unetr yet)")
        paper = make_paper_model(tmpd / "paper")
        run = run_bm_segment(mri, paper, tmpd / "paper-out", "--device", "cpu")
        _print_run("CPU paper-size UNETR (random weights) at 1 mm on the real MRI", run, 120.0)


def gpu_benchmarks() -> None:
    import numpy as np
    import torch
    from monai.inferers import sliding_window_inference

    from segmentation.phantoms import make_phantom
    from segmentation.synthetic_mr import write_dicom_series

    if not torch.cuda.is_available():
        print("GPU: skipped (no CUDA device on this machine)")
        return
    print(f"GPU: {torch.cuda.get_device_name(0)}")
    with tempfile.TemporaryDirectory(prefix="bench-seg-gpu-") as tmp:
        tmpd = Path(tmp)
        ph = make_phantom(42, geometry="axial_0p5mm")
        write_dicom_series(ph.image, tmpd / "series", patient_id="BENCH")
        paper = make_paper_model(tmpd / "paper")
        run_bm_segment(
            tmpd / "series", paper, tmpd / "warm", "--device", "cuda"
        )  # warm-up (CUDA init, cache)
        run = run_bm_segment(tmpd / "series", paper, tmpd / "out", "--device", "cuda")
        _print_run("GPU paper-size UNETR, 512x512x208 DICOM, end to end", run, 3.0)

        from segmentation.model import load_model
        from segmentation.preprocess import preprocess

        model = load_model(paper)
        pre = preprocess(ph.image, model.config.preprocessing)
        net = model.network.cuda().eval()
        x = torch.from_numpy(np.ascontiguousarray(pre.array))[None, None].cuda()

        def ours() -> None:
            with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16):
                sliding_window_inference(x, (96, 96, 96), 8, net, overlap=0.25, mode="gaussian")

        def monai_default() -> None:
            with torch.inference_mode():
                sliding_window_inference(x, (96, 96, 96), 1, net)

        for name, fn in (
            ("bf16, batch 8, gaussian", ours),
            ("MONAI defaults (batch 1, fp32)", monai_default),
        ):
            fn()
            torch.cuda.synchronize()
            t = time.perf_counter()
            for _ in range(3):
                fn()
            torch.cuda.synchronize()
            print(f"  network step {name}: {(time.perf_counter() - t) / 3 * 1000:.0f} ms")


def main() -> None:
    mri = Path(os.environ.get("METTRACK_MRI", DEFAULT_MRI))
    print(f"machine: {os.uname().machine}, {os.cpu_count()} CPU cores; input {mri.name}")
    if mri.is_file():
        cpu_benchmarks(mri)
    else:
        print(f"CPU benchmarks: skipped ({mri} not found)")
    gpu_benchmarks()


if __name__ == "__main__":
    main()
