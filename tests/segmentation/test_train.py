"""Training: patient-level split, augmentations, losses, metrics, freezing, bm-train end to end."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from segmentation.model import ModelConfig, build_network, load_model
from segmentation.phantoms import AcquisitionGeometry, make_phantom, write_phantom_nifti
from segmentation.train import (
    CALIBRATION_THRESHOLDS,
    CachedCase,
    LesionCounts,
    PatchSampler,
    TrainingError,
    augment,
    bright_non_lesion_voxels,
    build_parser,
    demo_config,
    dice_score,
    evaluate,
    extract_patch,
    freeze_all_but_output,
    lesion_counts,
    main,
    nifti_pair_sources,
    remove_small_components,
    segmentation_loss,
    selection_score,
    split_patients,
)


def _ball(shape: tuple[int, int, int], center: tuple[int, int, int], radius: float) -> np.ndarray:
    z, y, x = np.indices(shape)
    return ((z - center[0]) ** 2 + (y - center[1]) ** 2 + (x - center[2]) ** 2) <= radius**2


def test_split_is_by_patient_70_10_20_and_reproducible() -> None:
    patients = [f"P{i:02d}" for i in range(10) for _visit in range(3)]
    split = split_patients(patients, seed=4)
    counts = {k: sum(1 for v in split.values() if v == k) for k in ("train", "val", "test")}
    assert counts == {"train": 7, "val": 1, "test": 2}
    assert set(split) == set(patients)  # one split per patient: all visits follow their patient
    assert split == split_patients(list(reversed(patients)), seed=4)
    assert split != split_patients(patients, seed=5)


def test_split_refuses_too_few_patients() -> None:
    with pytest.raises(TrainingError, match="at least 3 patients"):
        split_patients(["A", "A", "B"], seed=0)


def test_augmentations_move_image_and_mask_together() -> None:
    rng = np.random.default_rng(0)
    mask = np.zeros((8, 1, 12, 12, 12), np.float32)
    mask[:, :, 2:5, 1:4, 7:11] = 1.0  # off-centre, so flips and rotations move it
    image = mask * 0.5 + 0.25
    x, y = augment(torch.from_numpy(image), torch.from_numpy(mask), rng)
    assert torch.equal((x > 0.5).float(), y)  # still aligned
    assert torch.equal(y.sum(dim=(1, 2, 3, 4)), torch.from_numpy(mask).sum(dim=(1, 2, 3, 4)))
    moved = [not torch.equal(y[b], torch.from_numpy(mask[b])) for b in range(8)]
    assert any(moved) and not all(moved)  # random, per sample
    # Only left-right flips and 180-degree axial rotations: the slice (z) profile never changes.
    assert torch.equal(y.sum(dim=(3, 4)), torch.from_numpy(mask).sum(axis=(3, 4)))


def test_extract_patch_pads_outside_the_volume() -> None:
    arr = np.arange(27, dtype=np.float32).reshape(3, 3, 3) + 1
    patch = extract_patch(arr, (0, 0, 0), (4, 4, 4))
    assert patch.shape == (4, 4, 4)
    assert patch[2, 2, 2] == arr[0, 0, 0] and patch[0, 0, 0] == 0


def test_losses() -> None:
    logit = torch.tensor([[[[[2.0, -1.0, 0.5]]]]])
    target = torch.tensor([[[[[1.0, 0.0, 1.0]]]]])
    expected_bce = -np.mean([math.log(1 / (1 + math.exp(-2))), math.log(1 - 1 / (1 + math.exp(1))),
                             math.log(1 / (1 + math.exp(-0.5)))])  # fmt: skip
    assert float(segmentation_loss(logit, target, "bce")) == pytest.approx(expected_bce, rel=1e-5)
    p = torch.sigmoid(logit)
    dice = (2 * float((p * target).sum()) + 1) / (float(p.sum()) + 2 + 1)
    assert float(segmentation_loss(logit, target, "dicebce")) == pytest.approx(
        expected_bce + 1 - dice, rel=1e-5
    )
    with pytest.raises(TrainingError, match="unknown loss"):
        segmentation_loss(logit, target, "focal")


def test_dice_and_lesion_counts_against_hand_counts() -> None:
    shape = (40, 40, 40)
    big = _ball(shape, (10, 10, 10), 5)  # 10 mm at 1 mm voxels
    other = _ball(shape, (30, 30, 30), 4)
    tiny = _ball(shape, (10, 30, 30), 1)  # under 5 mm: neither counted nor missed
    truth = big | other | tiny
    pred = _ball(shape, (10, 10, 11), 5) | _ball(shape, (30, 10, 30), 3)  # one hit, one false positive
    inter = (pred & truth).sum()
    assert dice_score(pred, truth) == pytest.approx(2 * inter / (pred.sum() + truth.sum()))
    counts = lesion_counts(pred, truth, (1.0, 1.0, 1.0), min_diameter_mm=5.0)
    assert counts == LesionCounts(true_positive=1, false_negative=1, false_positive=1)
    assert counts.f1 == pytest.approx(2 / (2 + 1 + 1))
    assert dice_score(np.zeros(shape), np.zeros(shape)) == 1.0


def test_freeze_encoder_trains_only_the_output_block() -> None:
    torch.manual_seed(0)
    net = build_network(demo_config(2.0, 32, feature_size=4, hidden_size=48))
    n = freeze_all_but_output(net)
    assert n == sum(p.numel() for p in net.out.parameters())
    before = {k: v.clone() for k, v in net.state_dict().items()}
    opt = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=0.1)
    loss = segmentation_loss(net(torch.rand(1, 1, 32, 32, 32)), torch.ones(1, 1, 32, 32, 32), "bce")
    loss.backward()
    opt.step()
    after = net.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith("out.") for k in changed)


def test_nifti_pairs_group_visits_by_patient(tmp_path: Path) -> None:
    for name in ("P1_v1", "P1_v2", "P2_v1"):
        img = sitk.Image(4, 4, 4, sitk.sitkInt16)
        sitk.WriteImage(img, str(tmp_path / f"{name}_t1c.nii.gz"))
        sitk.WriteImage(img, str(tmp_path / f"{name}_mask.nii.gz"))
    # An AI's mask kept next to a corrected one (MetTrack's training sets) is not a training pair.
    sitk.WriteImage(img, str(tmp_path / "P1_v1_ai_mask.nii.gz"))
    sources = nifti_pair_sources(tmp_path)
    assert [(s.case_id, s.patient_id) for s in sources] == [("P1_v1", "P1"), ("P1_v2", "P1"), ("P2_v1", "P2")]
    (tmp_path / "P3_mask.nii.gz").write_bytes((tmp_path / "P2_v1_mask.nii.gz").read_bytes())
    with pytest.raises(TrainingError, match="P3_mask.nii.gz has no image"):
        nifti_pair_sources(tmp_path)


#: Coarse enough to render quickly, fine enough for the 4 mm model of :func:`_tiny_config`.
COARSE = AcquisitionGeometry("axial_3mm", "axial", (3.0, 3.0, 3.0), (80, 80, 60))


@pytest.fixture(scope="module")
def nifti_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("data")
    for i in range(3):
        ph = make_phantom(100 + i, n_lesions=2, diameter_range_mm=(8.0, 20.0), geometry=COARSE)
        write_phantom_nifti(ph, folder, f"P{i}_v1")
    return folder


def _tiny_config() -> Any:
    """The demo architecture made small for the command's mechanics: 4 mm voxels, a narrow network and
    no N4 (fitted on every case of every run, it was most of these tests' time)."""
    cfg = demo_config(4.0, 32, feature_size=4, hidden_size=32, num_heads=2).to_dict()
    cfg["preprocessing"]["n4_enabled"] = False
    return ModelConfig.from_dict(cfg)


@pytest.fixture(scope="module")
def tiny_config_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("config") / "config.json"
    data = _tiny_config().to_dict()
    data["postprocessing"]["fp_reduction"] = {"min_depth_mm": 6.0}  # must reach the exported model
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def _train_args(data: Path, run: Path, *extra: str) -> list[str]:
    return ["--data", str(data), "--run-dir", str(run), "--export", str(run / "model"),
            "--steps-per-epoch", "2", "--batch-size", "2", "--threads", "1", "--device", "cpu", *extra]  # fmt: skip


@pytest.mark.slow
def test_bm_train_end_to_end_resume_and_fine_tune(
    nifti_dataset: Path, tiny_config_file: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    tiny = ("--config", str(tiny_config_file))
    assert main(_train_args(nifti_dataset, run, *tiny, "--epochs", "1", "--loss", "dicebce")) == 0
    model = load_model(run / "model")  # a complete, verified model directory
    cfg = model.config.to_dict()
    assert cfg["label"] == "demo — not for clinical use"
    # The calibration chose the thresholds and kept the config's false-positive reduction rules.
    assert cfg["postprocessing"]["fp_reduction"]["min_depth_mm"] == 6.0
    assert cfg["training"]["seed"] == 0 and "--data" in cfg["training"]["command"]
    assert cfg["training"]["patients_per_split"] == {"train": 1, "val": 1, "test": 1}
    assert {"dice", "lesion_f1"} <= set(cfg["metrics"]["test"]) and {"dice", "lesion_f1"} <= set(
        cfg["metrics"]["validation"]
    )
    card = (run / "model" / "MODEL_CARD.md").read_text()
    assert card.count("not for clinical use") >= 1
    # The card lists the postprocessing the model runs, its false-positive rules included.
    assert "## Postprocessing" in card and '"min_depth_mm": 6.0' in card
    assert "epoch 0 loss" in (run / "train.log").read_text()

    # Resume continues from last.pt: one more epoch, history of two.
    assert main(_train_args(nifti_dataset, run, *tiny, "--epochs", "2", "--resume")) == 0
    assert [h["epoch"] for h in json.loads((run / "summary.json").read_text())["history"]] == [0, 1]
    # Resuming with another architecture is refused with a sentence, not a size-mismatch traceback.
    assert main([*_train_args(nifti_dataset, run, "--epochs", "3", "--resume"), "--demo-patch", "48"]) == 2
    assert "started with another model config" in (run / "train.log").read_text()

    # Paper-style fine-tuning: init from the model, only the output block changes.
    ft = tmp_path / "ft"
    assert main(_train_args(nifti_dataset, ft, "--epochs", "1", "--init-from", str(run / "model"),
                            "--freeze-encoder", "--lr", "1e-2", "--model-name", "site-unetr",
                            "--model-version", "2.1", "--label", "research use only")) == 0  # fmt: skip
    site = load_model(ft / "model").config  # a site's model does not go out as the demo
    assert (site.name, site.version, site.label) == ("site-unetr", "2.1", "research use only")
    base = load_model(run / "model").network.state_dict()  # what --init-from loaded
    tuned = torch.load(ft / "last.pt", weights_only=False)["network"]
    changed = {k for k in base if not torch.equal(base[k], tuned[k])}
    assert changed and all(k.startswith("out.") for k in changed)


def test_bm_train_refuses_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--data", str(tmp_path), "--run-dir", str(tmp_path / "r")]) == 2
    assert "no <name>_mask.nii.gz" in (tmp_path / "r" / "train.log").read_text()
    assert main(["--phantoms", "2", "--run-dir", str(tmp_path / "r2")]) == 2


@pytest.mark.parametrize("damage", ["cropped", "shifted", "unreadable", "2d"])
def test_bm_train_refuses_a_mask_that_does_not_fit_its_image(
    nifti_dataset: Path, tiny_config_file: Path, tmp_path: Path, damage: str
) -> None:
    """A mask off its image's grid was resampled into an empty mask and trained on silently."""
    data = tmp_path / "data"
    shutil.copytree(nifti_dataset, data)
    mask_path = data / "P1_v1_mask.nii.gz"
    mask = sitk.ReadImage(str(mask_path))
    if damage == "cropped":
        mask = mask[: mask.GetSize()[0] // 2, :, :]
    elif damage == "shifted":
        mask.SetOrigin(tuple(v + 500.0 for v in mask.GetOrigin()))
    elif damage == "2d":
        mask = mask[:, :, mask.GetSize()[2] // 2]
    if damage == "unreadable":
        mask_path.write_bytes(b"not an image")
    else:
        sitk.WriteImage(mask, str(mask_path))
    run = tmp_path / "run"
    assert main(_train_args(data, run, "--config", str(tiny_config_file), "--epochs", "1")) == 2
    log = (run / "train.log").read_text()
    assert "case P1_v1" in log and "Traceback" not in log
    assert (
        "cannot read" if damage == "unreadable" else "3D" if damage == "2d" else "not on the image's grid"
    ) in log


def test_bm_train_missing_config_file_is_one_line(tmp_path: Path) -> None:
    assert (
        main(["--phantoms", "3", "--config", str(tmp_path / "nope.json"), "--run-dir", str(tmp_path / "r")])
        == 2
    )
    assert "no such file" in (tmp_path / "r" / "train.log").read_text()


def test_cache_key_changes_with_the_preprocessing_and_the_source(tmp_path: Path) -> None:
    """A stale cache (other spacing, corrected mask) must never be reused for a case of the same name."""
    from segmentation.preprocess import PreprocessConfig
    from segmentation.train import CaseSource, prepare_case

    ph = make_phantom(7, n_lesions=1, diameter_range_mm=(10.0, 12.0), geometry="axial_2mm")
    pre2 = replace(demo_config(2.0, 32).preprocessing, n4_enabled=False)  # N4 is not what is checked
    pre3 = PreprocessConfig(**{**dataclasses.asdict(pre2), "spacing_mm": (3.0, 3.0, 3.0)})
    source = CaseSource("case", "P", lambda: (ph.image, ph.mask), fingerprint="a")
    first = prepare_case(source, pre2, tmp_path)
    assert prepare_case(source, pre3, tmp_path).image.shape != first.image.shape
    corrected = CaseSource("case", "P", lambda: (ph.image, ph.mask * 0), fingerprint="b")
    assert prepare_case(corrected, pre2, tmp_path).mask.sum() == 0 < first.mask.sum()
    assert len(list(tmp_path.glob("case-*.npz"))) == 3


def test_dicom_rtstruct_cases_take_the_rois_matching_the_pattern(tmp_path: Path) -> None:
    from segmentation.contours import write_rtstruct
    from segmentation.synthetic_mr import write_dicom_series
    from segmentation.train import dicom_rtstruct_sources

    ph = make_phantom(5, n_lesions=2, diameter_range_mm=(12.0, 20.0), geometry="axial_2mm")
    case = tmp_path / "case1"
    write_dicom_series(ph.image, case, patient_id="SUBJ-7")
    ids = sorted(lesion.lesion_id for lesion in ph.lesions)
    # One lesion called GTV_1, the other "Edema": only the GTV must become training mask.
    write_rtstruct(ph.labels, case, case / "rtstruct.dcm", lesion_names={ids[0]: "GTV_1", ids[1]: "Edema"})
    (source,) = dicom_rtstruct_sources(tmp_path, "GTV*")
    assert source.patient_id == "SUBJ-7"
    image, mask = source.load()
    assert mask.GetSize() == ph.image.GetSize()
    truth = sitk.GetArrayViewFromImage(ph.labels) == ids[0]
    got = sitk.GetArrayViewFromImage(mask) > 0
    assert dice_score(got, truth) > 0.9  # polygon rasterisation differs from the voxels at the edges
    (no_match,) = dicom_rtstruct_sources(tmp_path, "CTV*")
    with pytest.raises(TrainingError, match="no ROI"):
        no_match.load()


@pytest.mark.slow
def test_evaluate_runs_the_whole_pipeline_on_the_native_grid(
    nifti_dataset: Path, tmp_path: Path, capsys
) -> None:  # type: ignore[no-untyped-def]
    from segmentation.model import save_model_dir

    cfg = _tiny_config()
    model_dir = save_model_dir(build_network(cfg), cfg, tmp_path / "m")
    assert main(["--data", str(nifti_dataset), "--evaluate", str(model_dir), "--run-dir", str(tmp_path / "r"),
                 "--device", "cpu"]) == 0  # fmt: skip
    result = json.loads(capsys.readouterr().out)
    assert result["cases"] == 3 and len(result["per_case"]) == 3
    # Two reference lesions per phantom, all >= 8 mm: each is either found or missed.
    assert result["lesion_tp"] + result["lesion_fn"] == 6
    assert 0.0 <= result["dice"] <= 1.0


def test_output_prior_sets_the_initial_lesion_probability() -> None:
    from segmentation.train import set_output_prior

    net = build_network(demo_config(2.0, 32, feature_size=4, hidden_size=48))
    set_output_prior(net, 0.01)
    # With the conv weights zeroed, the output is the bias alone: sigmoid(bias) must be the prior.
    with torch.no_grad():
        net.out.conv.conv.weight.zero_()
    prob = torch.sigmoid(net(torch.rand(1, 1, 32, 32, 32)))
    assert torch.allclose(prob, torch.full_like(prob, 0.01), atol=1e-6)
    with pytest.raises(TrainingError, match="prior"):
        set_output_prior(net, 1.5)


def _case_with_distractor() -> CachedCase:
    """A 40^3 head of value 0.3 with a bright lesion (ball r=4 at 12,12,12) and an equally bright
    non-lesion tube along x at (28, 28)."""
    image = np.zeros((40, 40, 40), np.float32)
    image[2:-2, 2:-2, 2:-2] = 0.3
    lesion = _ball(image.shape, (12, 12, 12), 4)
    image[lesion] = 0.9
    image[27:30, 27:30, 5:35] = 0.9
    return CachedCase("c", "p", image, lesion.astype(np.uint8), (2.0, 2.0, 2.0))


def test_bright_non_lesion_voxels_are_the_distractor_not_the_lesion() -> None:
    case = _case_with_distractor()
    idx = bright_non_lesion_voxels(case.image, case.mask)
    assert len(idx) > 0
    assert set(map(int, idx[:, 0])) <= {27, 28, 29} and set(map(int, idx[:, 1])) <= {27, 28, 29}


def test_hard_negative_patches_are_centred_near_distractors() -> None:
    case = _case_with_distractor()
    sampler = PatchSampler([case], (8, 8, 8), 0.0, np.random.default_rng(0), hard_negative_fraction=1.0)
    images, masks = sampler.sample(16)
    # Every patch holds part of the bright tube (centre jitter is +-2 voxels for an 8^3 patch) and no lesion.
    assert all((im > 0.8).any() for im in images[:, 0])
    assert masks.sum() == 0
    with pytest.raises(TrainingError, match="sum to at most 1"):
        PatchSampler([case], (8, 8, 8), 0.8, np.random.default_rng(0), hard_negative_fraction=0.3)


class _ConstantLogit(torch.nn.Module):
    """A stand-in network whose lesion logit is a fixed field: lesion 0.65 probability, distractor 0.55."""

    def __init__(self, logit: np.ndarray):
        super().__init__()
        self.logit = torch.from_numpy(logit)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # A copy: the sliding-window blender scales its predictor's output in place.
        return self.logit.expand_as(x).clone() if x.shape[-3:] == self.logit.shape else torch.zeros_like(x)


def test_calibration_picks_the_threshold_that_drops_the_false_positive() -> None:
    case = _case_with_distractor()
    prob = np.full(case.image.shape, 0.01, np.float32)
    prob[case.mask > 0] = 0.65
    prob[27:30, 27:30, 5:35] = 0.55
    logit = np.log(prob / (1 - prob)).astype(np.float32)
    config = demo_config(patch=48)  # window larger than the 40^3 case: one window, the whole case
    net = _ConstantLogit(np.pad(logit, 4))  # monai pads the 40^3 input to the 48^3 window, 4 voxels a side
    plain = evaluate(net, [case], config)  # threshold 0.5: the tube is a false positive
    assert (plain["lesion_tp"], plain["lesion_fp"]) == (1, 1)
    best = evaluate(net, [case], config, calibrate=True)
    assert (best["lesion_tp"], best["lesion_fp"], best["lesion_f1"]) == (1, 0, 1.0)
    assert 0.55 < best["threshold"] <= 0.65 and best["threshold"] in CALIBRATION_THRESHOLDS
    assert selection_score(best) > selection_score(plain)


def test_calibrated_scores_equal_the_plain_metrics_of_the_chosen_post_processing() -> None:
    """The tabulated grid search scores each setting exactly as thresholding, dropping small components
    and counting with ``lesion_counts`` / ``dice_score`` would (the straightforward path as oracle)."""
    from segmentation.model import PostprocessConfig

    rng = np.random.default_rng(3)
    shape = (40, 40, 40)
    truth = _ball(shape, (12, 12, 12), 5) | _ball(shape, (28, 28, 28), 2.5) | _ball(shape, (30, 10, 10), 1)
    prob = np.clip(
        ndi_gaussian(truth.astype(np.float32) * 0.9 + (rng.random(shape) > 0.995) * 0.85, 1.0)
        + rng.random(shape) * 0.1,
        0,
        1,
    ).astype(np.float32)
    case = CachedCase("c", "p", np.ones(shape, np.float32), truth.astype(np.uint8), (2.0, 2.0, 2.0))
    config = demo_config(patch=48)
    net = _ConstantLogit(np.pad(np.log(prob / (1 - prob + 1e-6) + 1e-6).astype(np.float32), 4))
    best = evaluate(net, [case], config, calibrate=True)
    post = PostprocessConfig(best["threshold"], best["min_lesion_volume_mm3"], best["detection_threshold"])
    p = predict_probability_for_test(net, case, config)
    pred = remove_small_components(post.binarise(p), case.spacing_mm, post.min_lesion_volume_mm3)
    counts = lesion_counts(pred, case.mask, case.spacing_mm, 5.0, post.min_lesion_volume_mm3)
    assert (best["lesion_tp"], best["lesion_fn"], best["lesion_fp"]) == (
        counts.true_positive,
        counts.false_negative,
        counts.false_positive,
    )
    assert best["dice"] == pytest.approx(dice_score(pred, case.mask), abs=1e-12)
    # Every grid point agrees, not only the chosen one.
    for threshold in (0.3, 0.5):
        for detection in (None, 0.9):
            cfg = replace(config, postprocessing=PostprocessConfig(threshold, 15.0, detection))
            got = evaluate(net, [case], cfg)
            post = cfg.postprocessing
            pred = remove_small_components(post.binarise(p), case.spacing_mm, 15.0)
            c = lesion_counts(pred, case.mask, case.spacing_mm, 5.0, 15.0)
            assert (got["lesion_tp"], got["lesion_fn"], got["lesion_fp"]) == (
                c.true_positive,
                c.false_negative,
                c.false_positive,
            )
            assert got["dice"] == pytest.approx(dice_score(pred, case.mask), abs=1e-12)


def predict_probability_for_test(net: torch.nn.Module, case: CachedCase, config: Any) -> np.ndarray:
    from segmentation.train import predict_probability

    return predict_probability(net, case.image, config)


def ndi_gaussian(a: np.ndarray, sigma: float) -> np.ndarray:
    from scipy import ndimage

    return ndimage.gaussian_filter(a, sigma)


def test_hysteresis_keeps_components_that_peak_high_at_their_full_extent() -> None:
    from segmentation.model import PostprocessConfig

    prob = np.zeros((20, 20, 20), np.float32)
    prob[2:8, 2:8, 2:8] = 0.6
    prob[4, 4, 4] = 0.97  # a lesion: wide at 0.6, confident at its centre
    prob[12:18, 12:18, 12:18] = 0.7  # a faint vessel: never confident
    mask = PostprocessConfig(threshold=0.5, detection_threshold=0.9).binarise(prob)
    assert mask[2:8, 2:8, 2:8].all() and not mask[12:18, 12:18, 12:18].any()
    assert PostprocessConfig(threshold=0.5).binarise(prob).sum() == 2 * 6**3  # no hysteresis


def test_phantom_style_reaches_the_generator_and_the_provenance(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import segmentation.train as T

    seen: dict[str, Any] = {}
    calls: list[dict[str, Any]] = []

    def fake_train(config: Any, sources: Any, options: Any, **kw: Any) -> dict[str, Any]:
        seen.update(sources=sources, options=options, **kw)
        return {"best": {}}

    def fake_make_phantom(seed: int, **kw: Any) -> Any:
        calls.append(kw)
        return type("Ph", (), {"image": None, "mask": None})()

    monkeypatch.setattr(T, "train", fake_train)
    monkeypatch.setattr(T.phantoms, "make_phantom", fake_make_phantom)
    args = ["--phantoms", "3", "--run-dir", str(tmp_path), "--threads", "1"]
    assert main([*args, "--phantom-style", "realistic"]) == 0
    assert (
        seen["data_description"] == "3 synthetic patients (segmentation.phantoms, seed 1000, style realistic)"
    )
    assert "--phantom-style realistic" in seen["options"].command  # both go into the model card
    seen["sources"][0].load()
    assert calls[-1]["style"] == "realistic" and "geometry" not in calls[-1]  # the sampler picks the protocol
    assert main(args) == 0  # the default stays the demo model's basic phantoms, described as before
    assert seen["data_description"] == "3 synthetic patients (segmentation.phantoms, seed 1000)"
    seen["sources"][1].load()
    assert "style" not in calls[-1] and calls[-1]["geometry"] == T.TRAINING_GEOMETRIES[1]
    with pytest.raises(SystemExit):
        build_parser().parse_args([*args, "--phantom-style", "fancy"])


def test_mixed_style_alternates_the_basic_and_the_realistic_patients_of_the_same_seeds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Patient i of a mixed set is patient i of the basic set (even i) or of the realistic set (odd i),
    drawn with the same arguments: a mixed run's even patients are the demo model's own patients."""
    import segmentation.train as T

    calls: list[tuple[int, dict[str, Any]]] = []

    def fake_make_phantom(seed: int, **kw: Any) -> Any:
        calls.append((seed, kw))
        return type("Ph", (), {"image": None, "mask": None})()

    monkeypatch.setattr(T.phantoms, "make_phantom", fake_make_phantom)
    for source in T.phantom_sources(4, 1000, "mixed"):
        source.load()
    mixed = list(calls)
    calls.clear()
    for style in ("basic", "realistic"):
        for source in T.phantom_sources(4, 1000, style):
            source.load()
    basic, realistic = calls[:4], calls[4:]
    assert mixed == [basic[0], realistic[1], basic[2], realistic[3]]
    assert [kw.get("style", "basic") for _, kw in mixed] == ["basic", "realistic", "basic", "realistic"]
    with pytest.raises(T.TrainingError, match="mixed"):
        T.phantom_sources(2, 1000, "fancy")
    assert build_parser().parse_args(["--phantoms", "3", "--phantom-style", "mixed"]).phantom_style == "mixed"
