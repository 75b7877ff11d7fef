"""Segmentation speed, memory and the CPU backend's accuracy: ``python -m bench segmentation``.

CPU part, on the real MRI (../shared/data BraTS-MET-00110-000 t1c; ``METTRACK_MRI`` for another):

1. The shipped demo model, ``bm-segment`` end to end in a child process with each backend (PyTorch, the
   reference; ONNX Runtime and OpenVINO on the shipped export): wall time, the child's own peak RSS,
   per-stage times. Target: <= 5 s.
2. The paper-size UNETR (in 1, out 2, feature 16, hidden 768: 92.8M parameters, random seeded weights)
   at 1 mm, exported to ONNX in a temporary directory (a site does this once, timed apart), then end
   to end with PyTorch at today's settings, and with ONNX Runtime and OpenVINO at the same settings
   (overlap 0.25: OpenVINO is the default CPU path), and with OpenVINO at the overlap chosen from the
   curve (:data:`CHOSEN_OVERLAP`). Target: <= 30 s; ratios against the 55.1 s recorded before the CPU
   backends and against the PyTorch run of the same bench. MONAI's default sliding-window settings
   (batch 1, overlap 0.25, constant blending, PyTorch) time the network step on the same input.
3. Accuracy of each export backend against PyTorch on the real MRI (both models): largest probability
   difference on the native grid, Dice of the masks, lesion tables (count, largest LD difference).
4. Overlap and blending, accuracy against time: the demo model (the one with trained weights) on the
   real MRI (Dice against the densest setting) and on a held-out phantom (Dice against its truth).
5. Windows per call (batch 1, 2, 4) of each export runtime on the paper-size export: seconds per window.

GPU part (only when CUDA is present, otherwise reported as skipped): the paper-size UNETR on a synthetic
512 x 512 x 208, 0.5 x 0.5 x 1 mm DICOM series, end to end with bf16 and batched windows; the network
step alone; and MONAI's default sliding-window settings on the same input and card.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from bench import DEFAULT_MRI, ROOT

#: End to end time of the paper-size UNETR on the real MRI before the CPU backend (issue 23, quiet machine).
BEFORE_S = 55.1
#: Window overlap of the fast paper-size run, chosen from the overlap curve (docs/benchmarks.md).
CHOSEN_OVERLAP = 0.0

#: The child process reports its own peak resident memory (ru_maxrss of RUSAGE_CHILDREN is the largest
#: child so far, which would hide a smaller later run).
_CHILD = (
    "import resource, sys\n"
    "from segmentation.cli import segment_main\n"
    "code = segment_main(sys.argv[1:])\n"
    "usage = resource.getrusage(resource.RUSAGE_SELF)\n"
    "print('PEAK_RSS_KB', usage.ru_maxrss, 'CPU_S', usage.ru_utime + usage.ru_stime, file=sys.stderr)\n"
    "raise SystemExit(code)\n"
)


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
    """Run bm-segment in a child process: wall time, its CPU time (all threads), peak RSS, lesions.json.

    CPU time is the figure that holds on a shared machine: wall time grows with the other work.
    """
    t = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, str(mri), str(out), "--model", str(model), *extra],
        capture_output=True, text=True, cwd=ROOT, check=False,
    )  # fmt: skip
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        raise RuntimeError(f"bm-segment failed ({proc.returncode}): {proc.stderr[-2000:]}")
    usage = next(line.split() for line in proc.stderr.splitlines() if line.startswith("PEAK_RSS_KB"))
    report = json.loads((out / "lesions.json").read_text())
    return {
        "wall_s": wall,
        "cpu_s": float(usage[3]),
        "peak_rss_gb": int(usage[1]) / 1024**2,
        "report": report,
        "out": out,
    }


def _print_run(title: str, run: dict, budget_s: float) -> None:
    rep = run["report"]
    print(f"{title}: {run['wall_s']:.1f} s end to end (budget {budget_s:.0f} s, ratio {run['wall_s'] / budget_s:.2f}), "
          f"CPU {run['cpu_s']:.1f} s, peak RSS {run['peak_rss_gb']:.2f} GB")  # fmt: skip
    print(f"  model {rep['model']['name']} ({rep['model']['parameters'] / 1e6:.1f}M parameters), "
          f"{rep['n_windows']} windows ({rep.get('n_windows_skipped', 0)} skipped), "
          f"{rep['device']}/{rep.get('backend', 'torch')}, {len(rep['lesions'])} lesions")  # fmt: skip
    print("    " + ", ".join(f"{stage} {sec:.2f}" for stage, sec in rep["timings_s"].items()))


def compare_runs(reference: dict, other: dict, what: str) -> dict:
    """Probability, mask and lesion-table agreement of two bm-segment runs written with --probability."""
    import numpy as np
    import SimpleITK as sitk

    def arrays(run: dict) -> tuple:
        prob = sitk.GetArrayFromImage(sitk.ReadImage(str(run["out"] / "probability.nii")))
        mask = sitk.GetArrayFromImage(sitk.ReadImage(str(run["out"] / "mask.nii.gz"))) > 0
        return prob, mask

    p_ref, m_ref = arrays(reference)
    p_new, m_new = arrays(other)
    both = int(m_ref.sum() + m_new.sum())
    dice = 1.0 if both == 0 else 2.0 * float((m_ref & m_new).sum()) / both
    # Lesions paired by centroid (nearest within 2 mm), so that one extra speck does not shift the pairs.
    l_ref, l_new = reference["report"]["lesions"], other["report"]["lesions"]
    c_new = np.array([m["centroid_mm"] for m in l_new]).reshape(-1, 3)
    ld, paired = 0.0, 0
    for m in l_ref:
        if not len(c_new):
            break
        d = np.linalg.norm(c_new - np.array(m["centroid_mm"]), axis=1)
        k = int(np.argmin(d))
        if d[k] <= 2.0:
            paired += 1
            ld = max(ld, abs(m["longest_diameter_mm"] - l_new[k]["longest_diameter_mm"]))
    out = {
        "max_abs_prob": float(np.abs(p_ref - p_new).max()),
        "dice": dice,
        "paired": paired,
        "max_ld_mm": ld,
    }
    print(f"  {what}: max |probability difference| {out['max_abs_prob']:.2e}, mask Dice {dice:.4f}, "
          f"lesions {len(l_ref)} vs {len(l_new)}, {paired} paired by centroid (2 mm), "
          f"largest LD difference of a pair {ld:.3f} mm")  # fmt: skip
    return out


def demo_runs(mri: Path, tmpd: Path) -> None:
    from segmentation.modeldir import DEMO_MODEL_DIR

    runs = {}
    for backend in ("torch", "onnx", "openvino"):
        runs[backend] = run_bm_segment(mri, DEMO_MODEL_DIR, tmpd / f"demo-{backend}", "--device", "cpu",
                                       "--backend", backend, "--probability")  # fmt: skip
        _print_run(f"CPU demo model, {backend}", runs[backend], 5.0)
    for backend in ("onnx", "openvino"):
        print(f"  ratio {backend} / torch end to end: wall {runs[backend]['wall_s'] / runs['torch']['wall_s']:.2f}, "
              f"CPU {runs[backend]['cpu_s'] / runs['torch']['cpu_s']:.2f}")  # fmt: skip
        compare_runs(runs["torch"], runs[backend], f"demo {backend} vs torch on the real MRI")


def paper_runs(mri: Path, tmpd: Path) -> Path:
    from segmentation.onnx_backend import export_onnx

    paper = make_paper_model(tmpd / "paper")
    t = time.perf_counter()
    record = export_onnx(paper)
    print(f"paper-size export (once per site and weights): {time.perf_counter() - t:.1f} s, "
          f"max |probability difference| on the check window {record.max_abs_diff:.1e}")  # fmt: skip
    base = ("--device", "cpu", "--probability")
    torch_run = run_bm_segment(mri, paper, tmpd / "p-torch", *base, "--backend", "torch")
    _print_run("CPU paper-size UNETR, torch, overlap 0.25, batch 4 (today's settings)", torch_run, 30.0)
    same = {}
    for backend in ("onnx", "openvino"):
        same[backend] = run_bm_segment(mri, paper, tmpd / f"p-{backend}", *base, "--backend", backend)
        _print_run(f"CPU paper-size UNETR, {backend}, overlap 0.25, one window per call", same[backend], 30.0)
    fast = run_bm_segment(
        mri, paper, tmpd / "p-fast", *base, "--backend", "openvino", "--overlap", str(CHOSEN_OVERLAP)
    )
    _print_run(f"CPU paper-size UNETR, openvino, overlap {CHOSEN_OVERLAP}", fast, 30.0)
    default = same["openvino"]
    print(f"  default CPU path (openvino, overlap 0.25): ratio vs before ({BEFORE_S} s) "
          f"{default['wall_s'] / BEFORE_S:.2f}; vs torch in this run: wall {default['wall_s'] / torch_run['wall_s']:.2f}, "
          f"CPU {default['cpu_s'] / torch_run['cpu_s']:.2f}; vs onnx in this run: wall "
          f"{default['wall_s'] / same['onnx']['wall_s']:.2f}, CPU {default['cpu_s'] / same['onnx']['cpu_s']:.2f}")  # fmt: skip
    print(f"  openvino at overlap {CHOSEN_OVERLAP}: ratio vs before {fast['wall_s'] / BEFORE_S:.2f}, "
          f"vs torch wall {fast['wall_s'] / torch_run['wall_s']:.2f}")  # fmt: skip
    for backend in ("onnx", "openvino"):
        compare_runs(torch_run, same[backend], f"paper {backend} vs torch, same settings")
    compare_runs(torch_run, fast, f"paper openvino overlap {CHOSEN_OVERLAP} vs torch overlap 0.25")
    return paper


def monai_default_network(mri: Path, paper: Path) -> None:
    """The network step with MONAI's default sliding-window settings (PyTorch, batch 1, constant)."""
    import numpy as np
    import SimpleITK as sitk
    import torch
    from monai.inferers import sliding_window_inference

    from segmentation.model import load_model
    from segmentation.preprocess import preprocess

    model = load_model(paper, backend="torch")
    pre = preprocess(sitk.ReadImage(str(mri)), model.config.preprocessing)
    x = torch.from_numpy(np.ascontiguousarray(pre.array))[None, None]
    network = model.network
    t, c = time.perf_counter(), time.process_time()
    with torch.inference_mode():
        sliding_window_inference(x, (96, 96, 96), 1, network)
    print(f"MONAI default sliding window (PyTorch, batch 1, overlap 0.25, constant), network step: "
          f"{time.perf_counter() - t:.1f} s, CPU {time.process_time() - c:.1f} s on {tuple(pre.array.shape)} voxels")  # fmt: skip


def window_batches(paper: Path) -> None:
    """Seconds per 96^3 window of each export runtime, by windows per call."""
    import numpy as np

    from segmentation.model import load_model
    from segmentation.onnx_backend import predictor_of

    x = np.random.default_rng(0).random((4, 1, 96, 96, 96), dtype=np.float32)
    for backend in ("onnx", "openvino"):
        t = time.perf_counter()
        predictor = predictor_of(load_model(paper, backend=backend), backend=backend)
        print(f"  {backend}: session or compilation {time.perf_counter() - t:.2f} s")
        predictor(x[:1])  # warm-up
        for batch in (1, 2, 4):
            t, c = time.perf_counter(), time.process_time()
            predictor(x[:batch])
            print(f"  {backend}, {batch} window(s) per call: {(time.perf_counter() - t) / batch:.2f} s per window, "
                  f"CPU {(time.process_time() - c) / batch:.2f} s per window ({predictor.threads} threads)")  # fmt: skip


def overlap_curve(mri: Path) -> None:
    """Dice and time of the demo model by overlap and blending, on the real MRI and a held-out phantom."""
    import SimpleITK as sitk

    from segmentation.inference import InferenceOptions, segment_image
    from segmentation.model import load_model
    from segmentation.phantoms import make_phantom
    from segmentation.train import dice_score

    model = load_model()
    phantom = make_phantom(7, n_lesions=4, diameter_range_mm=(6.0, 30.0), geometry="axial_1mm")
    truth = sitk.GetArrayFromImage(phantom.mask) > 0
    image = sitk.ReadImage(str(mri))
    settings = [(o, m) for m in ("gaussian", "constant") for o in (0.0, 0.125, 0.25, 0.5)]
    reference = None
    print("overlap curve, demo model, default CPU backend (reference: overlap 0.5, gaussian):")
    print("  overlap mode      windows  network s  Dice vs ref  lesions  | phantom Dice vs truth  network s")
    rows = []
    for overlap, mode in [(0.5, "gaussian"), *[s for s in settings if s != (0.5, "gaussian")]]:
        opts = InferenceOptions(device="cpu", overlap=overlap)
        cfg = model.config
        tuned = model.with_config(replace(cfg, inference=replace(cfg.inference, mode=mode)))
        real = segment_image(image, tuned, opts)
        mask = sitk.GetArrayFromImage(real.mask) > 0
        if reference is None:
            reference = mask
        ph = segment_image(phantom.image, tuned, opts)
        ph_dice = dice_score(sitk.GetArrayFromImage(ph.mask) > 0, truth)
        rows.append(
            (
                overlap,
                mode,
                real.n_windows,
                real.timings_s["network"],
                dice_score(mask, reference),
                len(real.lesions),
                ph_dice,
                ph.timings_s["network"],
            )
        )
    for r in sorted(rows, key=lambda r: (r[1], r[0])):
        print(
            f"  {r[0]:<7} {r[1]:<9} {r[2]:>7}  {r[3]:>9.2f}  {r[4]:>11.4f}  {r[5]:>7}  | {r[6]:>21.4f}  {r[7]:>9.2f}"
        )


def cpu_benchmarks(mri: Path) -> None:
    from segmentation.modeldir import DEMO_MODEL_DIR

    with tempfile.TemporaryDirectory(prefix="bench-seg-") as tmp:
        tmpd = Path(tmp)
        if (DEMO_MODEL_DIR / "config.json").is_file():
            demo_runs(mri, tmpd)
        else:
            print("CPU demo model: skipped (no segmentation/models/demo-unetr yet)")
        paper = paper_runs(mri, tmpd)
        monai_default_network(mri, paper)
        window_batches(paper)
        if os.environ.get("BENCH_SEGMENTATION_CURVE", "1") != "0":
            overlap_curve(mri)


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
    load = os.getloadavg()
    print(f"machine: {os.uname().machine}, {os.cpu_count()} CPU cores, load average {load[0]:.2f} {load[1]:.2f} "
          f"{load[2]:.2f} at the start; input {mri.name}")  # fmt: skip
    if mri.is_file():
        cpu_benchmarks(mri)
    else:
        print(f"CPU benchmarks: skipped ({mri} not found)")
    gpu_benchmarks()
    load = os.getloadavg()
    print(f"load average at the end: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")


if __name__ == "__main__":
    main()
