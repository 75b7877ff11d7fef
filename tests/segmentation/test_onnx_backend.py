"""The CPU backends (OpenVINO and ONNX Runtime on the model's export): accuracy contract, integrity,
selection.

Accuracy contract of each backend, checked here on a held-out phantom with the shipped demo model and by
``python -m bench segmentation`` on the real MRI: lesion probabilities within :data:`PROBABILITY_TOLERANCE`
of PyTorch's everywhere on the native grid, thresholded masks with Dice >= 0.99, and the same lesion
table (same lesions, longest diameters within 0.5 mm).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from monai.inferers import sliding_window_inference

from segmentation.cli import export_main, segment_main
from segmentation.errors import BackendUnavailableError, ModelIntegrityError, StaleExportError
from segmentation.inference import InferenceOptions, SegmentationResult, resolve_backend, segment_image
from segmentation.io import sha256_file
from segmentation.model import build_network, load_model, save_model_dir
from segmentation.modeldir import CONFIG_NAME, DEMO_MODEL_DIR, ONNX_NAME, WEIGHTS_NAME
from segmentation.onnx_backend import (
    OnnxPredictor,
    OpenVinoPredictor,
    cpu_threads,
    export_onnx,
    import_openvino,
)
from segmentation.phantoms import make_phantom
from segmentation.preprocess import preprocess
from segmentation.probability import to_float
from segmentation.sliding import scan_starts, sliding_window
from segmentation.train import demo_config, dice_score

#: Largest absolute difference of the native-grid lesion probability, a runtime of the export vs
#: PyTorch (fp32).
PROBABILITY_TOLERANCE = 1e-3


def _tiny_model_dir(root: Path) -> Path:
    torch.manual_seed(0)
    cfg = demo_config(spacing_mm=2.0, patch=32, feature_size=4, hidden_size=48, num_heads=4)
    return save_model_dir(build_network(cfg), cfg, root / "tiny")


@pytest.fixture(scope="module")
def exported_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small random-weight model directory with its ONNX export."""
    directory = _tiny_model_dir(tmp_path_factory.mktemp("onnx"))
    export_onnx(directory)
    return directory


@pytest.fixture
def exported_copy(tmp_path: Path, exported_dir: Path) -> Path:
    """A copy of :func:`exported_dir` that a test may damage."""
    return Path(shutil.copytree(exported_dir, tmp_path / "copy"))


@pytest.fixture(scope="module")
def held_out_runs() -> dict[str, SegmentationResult]:
    """The demo model on a phantom it was not trained on (training used seeds 1000-1099), each backend."""
    phantom = make_phantom(7, n_lesions=4, diameter_range_mm=(6.0, 30.0), geometry="axial_1mm")
    model = load_model(DEMO_MODEL_DIR)
    return {
        backend: segment_image(
            phantom.image, model, InferenceOptions(device="cpu", backend=backend, keep_probability=True)
        )
        for backend in ("torch", "onnx", "openvino")
    }


def test_demo_model_ships_a_verified_export() -> None:
    model = load_model(DEMO_MODEL_DIR)
    assert model.onnx_path == DEMO_MODEL_DIR / ONNX_NAME
    export = model.config.onnx_export
    assert export is not None and export.weights_sha256 == model.config.weights_sha256
    assert export.sha256 == sha256_file(DEMO_MODEL_DIR / ONNX_NAME)
    # The PyTorch network is built on first use only, and it is the verified weights.
    assert model.n_parameters == sum(p.numel() for p in model.network.parameters())


def test_the_onnx_path_imports_neither_torch_nor_monai(tmp_path: Path) -> None:
    """Their import takes seconds: a CPU run with the export must not pay for it."""
    phantom = make_phantom(9, n_lesions=1, diameter_range_mm=(10.0, 12.0), geometry="axial_2mm")
    src = tmp_path / "t1c.nii.gz"
    sitk.WriteImage(phantom.image, str(src))
    code = (
        "import sys\n"
        "from segmentation.cli import segment_main\n"
        f"assert segment_main([{str(src)!r}, {str(tmp_path / 'out')!r}, '--device', 'cpu']) == 0\n"
        "print(sorted(m for m in ('torch', 'monai') if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=600
    )
    assert out.stdout.strip().splitlines()[-1] == "[]"
    assert json.loads((tmp_path / "out" / "lesions.json").read_text())["backend"] == "openvino"


@pytest.mark.parametrize("backend", ["onnx", "openvino"])
def test_export_runtime_matches_torch_on_a_held_out_phantom(
    held_out_runs: dict[str, SegmentationResult], backend: str
) -> None:
    reference, fast = held_out_runs["torch"], held_out_runs[backend]
    assert (reference.backend, fast.backend) == ("torch", backend)
    assert fast.runtime == f"cpu/{backend}"
    assert reference.probability is not None and fast.probability is not None
    # Compared as probabilities: the stored maps are uint16 (segmentation.probability).
    p_ref = to_float(sitk.GetArrayFromImage(reference.probability))
    p_fast = to_float(sitk.GetArrayFromImage(fast.probability))
    assert float(np.abs(p_fast - p_ref).max()) <= PROBABILITY_TOLERANCE
    m_ref = sitk.GetArrayFromImage(reference.mask)
    m_fast = sitk.GetArrayFromImage(fast.mask)
    assert m_ref.sum() > 0, "the demo model should find the phantom's lesions"
    assert dice_score(m_fast, m_ref) >= 0.99
    # The lesion tables: same lesions (labels, centroids), longest diameters within 0.5 mm.
    assert len(fast.lesions) == len(reference.lesions)
    for a, b in zip(fast.lesions, reference.lesions, strict=True):
        assert a.label == b.label
        assert np.allclose(a.centroid_mm, b.centroid_mm, atol=1.0)
        assert abs(a.longest_diameter_mm - b.longest_diameter_mm) <= 0.5


def test_auto_picks_openvino_on_the_cpu_only_with_an_export(exported_dir: Path, tmp_path: Path) -> None:
    cpu, cuda = "cpu", "cuda"
    with_export = load_model(exported_dir)
    assert resolve_backend("auto", cpu, with_export) == "openvino"
    assert resolve_backend("auto", cuda, with_export) == "torch"
    assert resolve_backend("torch", cpu, with_export) == "torch"
    assert resolve_backend("onnx", cpu, with_export) == "onnx"
    without = load_model(_tiny_model_dir(tmp_path))
    assert without.onnx_path is None
    assert resolve_backend("auto", cpu, without) == "torch"
    for backend in ("onnx", "openvino"):
        with pytest.raises(BackendUnavailableError, match="runs on the CPU"):
            resolve_backend(backend, cuda, with_export)
        with pytest.raises(BackendUnavailableError, match="bm-export"):
            resolve_backend(backend, cpu, without)
        with pytest.raises(BackendUnavailableError, match="bm-export"):
            load_model(without.directory, backend=backend)


def test_auto_falls_back_to_onnx_runtime_without_openvino(
    exported_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A site that installs without OpenVINO still gets an export runtime, and a clear refusal when it
    names OpenVINO."""
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "openvino" else find_spec(name, *a)
    )
    model = load_model(exported_dir)
    assert resolve_backend("auto", "cpu", model) == "onnx"
    with pytest.raises(BackendUnavailableError, match="needs the openvino package"):
        resolve_backend("openvino", "cpu", model)


def test_export_is_checked_by_every_runtime(exported_dir: Path) -> None:
    """The record names each runtime's difference from PyTorch, and both runtimes agree with each other
    on a window they never saw, within the contract."""
    export = load_model(exported_dir).config.onnx_export
    assert export is not None
    by_runtime = export.extra["max_abs_diff_by_runtime"]
    assert set(by_runtime) == {"onnxruntime", "openvino"}
    assert set(export.extra["versions"]) == {"torch", "onnxruntime", "openvino"}
    assert all(0.0 <= d <= PROBABILITY_TOLERANCE for d in by_runtime.values())
    assert export.max_abs_diff == max(by_runtime.values())
    path = exported_dir / ONNX_NAME
    window = np.random.default_rng(42).normal(size=(3, 1, 32, 32, 32)).astype(np.float32)
    a, b = OnnxPredictor(path, 1)(window), OpenVinoPredictor(path, 1)(window)
    assert a.shape == b.shape == (3, 1, 32, 32, 32)
    assert float(np.abs(a - b).max()) <= PROBABILITY_TOLERANCE


def test_openvino_instance_norms_match_pytorch_closely() -> None:
    """OpenVINO's own instance norm sums a feature map's statistics in float32 lanes; the rewritten
    two-stage statistics bring the demo model's windows of a held-out phantom to within 5e-5 of
    PyTorch (measured 3e-6 to 5e-6; OpenVINO's own: 5e-4 to 7e-4)."""
    ov = import_openvino()

    from segmentation.onnx_backend import _lesion_probability

    model = load_model(DEMO_MODEL_DIR, backend="torch")
    phantom = make_phantom(7, n_lesions=4, diameter_range_mm=(6.0, 30.0), geometry="axial_2mm")
    array = preprocess(phantom.image, model.config.preprocessing).array
    r = int(model.config.inference.roi_size[0])
    c = [max(0, s // 2 - r // 2) for s in array.shape]
    windows = np.stack([array[c[0] : c[0] + r, c[1] : c[1] + r, c[2] : c[2] + r], array[:r, :r, :r]])
    windows = np.ascontiguousarray(windows[:, None], dtype=np.float32)
    with torch.inference_mode():
        reference = _lesion_probability(model.network(torch.from_numpy(windows)).numpy())
    predictor = OpenVinoPredictor(DEMO_MODEL_DIR / ONNX_NAME, 1)
    assert predictor.n_precise_norms > 0
    precise = float(np.abs(predictor(windows) - reference).max())
    core = ov.Core()
    plain_model = core.compile_model(
        core.read_model(str(DEMO_MODEL_DIR / ONNX_NAME)),
        "CPU",
        {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": 1},
    )
    plain = float(np.abs(_lesion_probability(plain_model([windows])[0]) - reference).max())
    assert precise <= 5e-5
    assert precise < plain


def test_openvino_reports_nothing_home(tmp_path: Path) -> None:
    """OpenVINO's package sends usage telemetry on import by default and keeps a client id in
    ~/intel; through MetTrack it writes nothing there (and so sends nothing). A plain import in the
    same empty home shows what is blocked."""
    home = tmp_path / "home"
    home.mkdir()
    env = {**os.environ, "HOME": str(home)}
    env.pop("CI", None)  # OpenVINO's own switch: off, as on a site's server
    code = (
        "import sys, numpy as np\n"
        "from segmentation.modeldir import DEMO_MODEL_DIR, ONNX_NAME\n"
        "from segmentation.onnx_backend import OpenVinoPredictor\n"
        "OpenVinoPredictor(DEMO_MODEL_DIR / ONNX_NAME, 1)(np.zeros((1, 1, 48, 48, 48), np.float32))\n"
        "print(sys.modules.get('openvino_telemetry'))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True, timeout=600
    )
    assert out.stdout.strip().splitlines()[-1] == "None"
    assert list(home.iterdir()) == []
    subprocess.run([sys.executable, "-c", "import openvino"], env=env, check=True, timeout=600)
    assert (home / "intel").is_dir()  # the plain import would have kept a client id there


def test_openvino_runs_float32_with_the_threads_asked_for(exported_dir: Path) -> None:
    """No bf16 or on-the-fly quantisation (another model), no pinned cores (shared servers)."""
    ov = import_openvino()

    predictor = OpenVinoPredictor(exported_dir / ONNX_NAME, 1)
    compiled = predictor.compiled
    assert compiled.get_property("INFERENCE_PRECISION_HINT") == ov.Type.f32
    assert int(compiled.get_property("INFERENCE_NUM_THREADS")) == 1
    assert compiled.get_property("ENABLE_CPU_PINNING") is False


def test_tampered_export_is_refused(exported_copy: Path) -> None:
    path = exported_copy / ONNX_NAME
    path.write_bytes(path.read_bytes()[:-1] + b"\0")
    with pytest.raises(ModelIntegrityError, match="sha256"):
        load_model(exported_copy)
    # PyTorch, the reference path, still runs the verified weights.
    assert load_model(exported_copy, backend="torch").onnx_path is None


def test_missing_export_file_is_refused(exported_copy: Path) -> None:
    (exported_copy / ONNX_NAME).unlink()
    with pytest.raises(ModelIntegrityError, match="missing"):
        load_model(exported_copy)


def test_stale_export_is_refused(exported_copy: Path) -> None:
    """New weights (with their checksum recorded) and the export of the old ones left beside them."""
    model = load_model(exported_copy, backend="torch")
    with torch.no_grad():
        for p in model.network.parameters():
            p.add_(0.01)
    torch.save(model.network.state_dict(), exported_copy / WEIGHTS_NAME)
    config = json.loads((exported_copy / CONFIG_NAME).read_text())
    config["weights_sha256"] = sha256_file(exported_copy / WEIGHTS_NAME)
    (exported_copy / CONFIG_NAME).write_text(json.dumps(config))
    with pytest.raises(StaleExportError, match="stale"):
        load_model(exported_copy)
    assert export_main([str(exported_copy)]) == 0  # exporting again makes it usable
    assert load_model(exported_copy).onnx_path is not None


def test_saving_new_weights_drops_the_old_export_record(exported_dir: Path, tmp_path: Path) -> None:
    model = load_model(exported_dir)
    saved = save_model_dir(model.network, model.config, tmp_path / "new")
    assert "onnx_export" not in json.loads((saved / CONFIG_NAME).read_text())
    assert load_model(saved).onnx_path is None


def test_bm_segment_backend_choice(exported_dir: Path, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    phantom = make_phantom(9, n_lesions=2, diameter_range_mm=(10.0, 20.0), geometry="axial_2mm")
    src = tmp_path / "t1c.nii.gz"
    sitk.WriteImage(phantom.image, str(src))
    tables = {}
    for backend in ("auto", "torch", "onnx", "openvino"):
        out = tmp_path / backend
        args = [str(src), str(out), "--model", str(exported_dir), "--device", "cpu", "--backend", backend]
        assert segment_main(args) == 0
        tables[backend] = json.loads((out / "lesions.json").read_text())
    assert [tables[b]["backend"] for b in tables] == ["openvino", "torch", "onnx", "openvino"]
    out = capsys.readouterr().out
    assert "on cpu/openvino" in out and "on cpu/onnx" in out
    lds = {b: [m["longest_diameter_mm"] for m in t["lesions"]] for b, t in tables.items()}
    for backend in ("onnx", "openvino"):
        assert len(lds[backend]) == len(lds["torch"])
        assert np.allclose(lds[backend], lds["torch"], atol=0.5)


def test_bm_segment_onnx_without_export_is_one_clear_line(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    directory = _tiny_model_dir(tmp_path)
    phantom = make_phantom(9, n_lesions=1, diameter_range_mm=(10.0, 12.0), geometry="axial_2mm")
    src = tmp_path / "t1c.nii.gz"
    sitk.WriteImage(phantom.image, str(src))
    code = segment_main([str(src), str(tmp_path / "o"), "--model", str(directory), "--backend", "onnx"])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert "BackendUnavailableError" in err and "bm-export" in err and len(err.splitlines()) == 1


@pytest.mark.parametrize(
    ("size", "roi", "overlap"), [(96, 96, 0.25), (170, 96, 0.0), (170, 96, 0.25), (71, 48, 0.5)]
)
def test_window_starts_match_monai(size: int, roi: int, overlap: float) -> None:
    from monai.data.utils import dense_patch_slices

    expected = sorted(
        {s[0].start for s in dense_patch_slices((size,), (roi,), (max(int(roi * (1 - overlap)), 1),))}
    )
    if size == roi:
        expected = [0]
    assert scan_starts(size, roi, overlap) == expected


def test_sliding_window_equals_monai_without_skipping() -> None:
    """Same windows, weights and padding as MONAI's sliding_window_inference (the previous CPU path)."""
    rng = np.random.default_rng(0)
    image = rng.random((40, 70, 30), dtype=np.float32)  # x smaller than the window: padded
    net = torch.nn.Sequential(torch.nn.Conv3d(1, 1, 3, padding=1), torch.nn.Sigmoid())
    torch.manual_seed(0)

    def predictor(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return net(torch.from_numpy(x)).numpy()

    for mode in ("gaussian", "constant"):
        ours = sliding_window(
            image, predictor, (32, 32, 32), overlap=0.25, mode=mode, batch_size=3
        ).probability
        with torch.inference_mode():
            ref = sliding_window_inference(
                torch.from_numpy(image)[None, None], (32, 32, 32), 2, net, overlap=0.25, mode=mode
            )
        assert isinstance(ref, torch.Tensor)
        assert ours.shape == image.shape and ours.dtype == np.float32
        assert float(np.abs(ours - ref[0, 0].numpy()).max()) <= 1e-5


def test_skipping_windows_without_head_gives_the_same_mask() -> None:
    """A head in a large field of air: the windows of air are skipped, the lesion mask is unchanged."""
    model = load_model(DEMO_MODEL_DIR)
    # Rendered at the model's 2 mm: the preprocessing would resample a finer phantom to it anyway.
    phantom = make_phantom(11, n_lesions=3, diameter_range_mm=(8.0, 25.0), geometry="axial_2mm")
    pre = preprocess(phantom.image, model.config.preprocessing)
    head = sitk.GetArrayFromImage(pre.head_mask)
    # Air beside the head box, 60 voxels (more than a window) left and right (the preprocessing crop
    # would remove it); along one axis only, which keeps the test's windows few.
    air = ((0, 0), (0, 0), (60, 60))
    image = np.pad(pre.array, air)
    mask = np.pad(head, air)
    roi = tuple(int(v) for v in model.config.inference.roi_size)[::-1]
    from segmentation.onnx_backend import predictor_of

    predictor = predictor_of(model)
    full = sliding_window(image, predictor, roi, overlap=0.25, mode="gaussian", batch_size=4)
    skipped = sliding_window(
        image, predictor, roi, overlap=0.25, mode="gaussian", batch_size=4, head_mask=mask
    )
    assert skipped.n_skipped > 0 and skipped.n_windows + skipped.n_skipped == full.n_windows
    threshold = model.config.postprocessing.threshold
    a = model.config.postprocessing.binarise(full.probability)
    b = model.config.postprocessing.binarise(skipped.probability)
    assert (full.probability >= threshold).sum() > 0
    assert dice_score(a, b) == 1.0
    # Inside the head the probabilities agree to blending precision.
    inside = mask > 0
    assert float(np.abs(full.probability[inside] - skipped.probability[inside]).max()) <= 0.02


def test_cpu_threads_follow_the_affinity_and_omp_num_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    cores = len(os.sched_getaffinity(0))
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert cpu_threads() == cores
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert cpu_threads() == 1
    monkeypatch.setenv("OMP_NUM_THREADS", str(cores + 8))  # never more threads than cores
    assert cpu_threads() == cores
    monkeypatch.setenv("OMP_NUM_THREADS", "many")  # not a number: ignored
    assert cpu_threads() == cores
