"""bm-segment: NIfTI and DICOM input, outputs, timings, self-check, clear errors."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
import torch

from segmentation.cli import segment_main, train_main
from segmentation.model import build_network, save_model_dir
from segmentation.modeldir import WEIGHTS_NAME
from segmentation.phantoms import make_phantom
from segmentation.synthetic_mr import write_dicom_series
from segmentation.train import demo_config


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    cfg = demo_config(spacing_mm=2.0, patch=32, feature_size=4, hidden_size=48, num_heads=4)
    return save_model_dir(build_network(cfg), cfg, tmp_path_factory.mktemp("m") / "tiny")


@pytest.fixture(scope="module")
def phantom():  # type: ignore[no-untyped-def]
    return make_phantom(9, n_lesions=2, diameter_range_mm=(10.0, 20.0), geometry="axial_2mm")


def test_nifti_input_writes_mask_and_lesion_table(
    tmp_path: Path, tiny_model_dir: Path, phantom, capsys
) -> None:  # type: ignore[no-untyped-def]
    src = tmp_path / "t1c.nii.gz"
    sitk.WriteImage(phantom.image, str(src))
    out = tmp_path / "out"
    args = [str(src), str(out), "--model", str(tiny_model_dir), "--device", "cpu", "--probability"]
    assert segment_main(args) == 0
    printed = capsys.readouterr().out
    assert "network" in printed and "total" in printed  # per-stage timings
    mask = sitk.ReadImage(str(out / "mask.nii.gz"))
    assert mask.GetSize() == phantom.image.GetSize() and mask.GetOrigin() == phantom.image.GetOrigin()
    report = json.loads((out / "lesions.json").read_text())
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "labels.nii.gz")))
    assert len(report["lesions"]) == labels.max()
    assert report["model"]["label"] == "demo — not for clinical use"
    assert {"read", "preprocess.n4", "network", "measure", "write"} <= set(report["timings_s"])
    assert report["rejected_components"] == [] and "fp_reduction" not in report["timings_s"]
    assert report["rim_completion_added_mm3"] == {} and "rim_completion" not in report["timings_s"]
    assert not (out / "rtstruct.dcm").exists() and not (out / "seg.dcm").exists()  # NIfTI input
    # probability.nii: uint16 on disk; nibabel (an independent reader) applies the 1/65535 scale, and
    # the mask is the probability at the model's threshold on the same grid (before small specks go).
    import nibabel

    stored = nibabel.load(str(out / "probability.nii"))
    assert stored.get_data_dtype() == np.uint16 and "probability.nii" in printed
    prob = np.asarray(stored.get_fdata(dtype=np.float32)).transpose(2, 1, 0)
    assert prob.shape == labels.shape and prob.min() >= 0.0 and prob.max() <= 1.0
    threshold = json.loads((tiny_model_dir / "config.json").read_text())["postprocessing"]["threshold"]
    assert np.all(prob[labels > 0] >= threshold)
    assert np.allclose(stored.affine, nibabel.load(str(out / "mask.nii.gz")).affine, atol=1e-4)


def _with_postprocessing(
    tmp_path: Path, tiny_model_dir: Path, phantom: Any, **post: Any
) -> tuple[Path, Path]:
    """The phantom written as NIfTI, and a copy of the tiny model whose config adds ``post`` to its
    postprocessing."""
    src = tmp_path / "t1c.nii.gz"
    sitk.WriteImage(phantom.image, str(src))
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / WEIGHTS_NAME).write_bytes((tiny_model_dir / WEIGHTS_NAME).read_bytes())
    config = json.loads((tiny_model_dir / "config.json").read_text())
    config["postprocessing"].update(post)
    (model_dir / "config.json").write_text(json.dumps(config))
    return src, model_dir


def test_rejected_components_are_listed_with_their_rule(
    tmp_path: Path, tiny_model_dir: Path, phantom, capsys
) -> None:  # type: ignore[no-untyped-def]
    # No component is ten times brighter than the brain's median: the rule rejects everything.
    src, model_dir = _with_postprocessing(
        tmp_path, tiny_model_dir, phantom, fp_reduction={"min_brain_contrast": 10.0}
    )
    out = tmp_path / "out"
    # A threshold just above 0 makes the whole head box one component, so there is always one to reject.
    args = [str(src), str(out), "--model", str(model_dir), "--device", "cpu", "--threshold", "1e-6"]
    assert segment_main(args) == 0
    report = json.loads((out / "lesions.json").read_text())
    assert report["lesions"] == [] and len(report["rejected_components"]) >= 1
    assert {r["reason"] for r in report["rejected_components"]} == {"brain_contrast"}
    assert report["rejected_components"][0]["features"]["contrast_to_brain"] < 10.0
    assert "fp_reduction" in report["timings_s"]
    assert "rejected (brain_contrast)" in capsys.readouterr().out


def test_classifier_rejections_carry_their_probability(
    tmp_path: Path, tiny_model_dir: Path, phantom, capsys
) -> None:  # type: ignore[no-untyped-def]
    # A classifier with no weight gives every component the probability of its bias: 1 / (1 + e) here.
    classifier = {"inputs": ["depth"], "mean": [0.0], "scale": [1.0], "weights": [0.0], "bias": -1.0,
                  "min_probability": 0.5}  # fmt: skip
    src, model_dir = _with_postprocessing(
        tmp_path, tiny_model_dir, phantom, fp_reduction={"classifier": classifier}
    )
    out = tmp_path / "out"
    args = [str(src), str(out), "--model", str(model_dir), "--device", "cpu", "--threshold", "1e-6"]
    assert segment_main(args) == 0
    report = json.loads((out / "lesions.json").read_text())
    assert report["lesions"] == [] and len(report["rejected_components"]) >= 1
    expected = 1.0 / (1.0 + 2.718281828459045)
    for rejected in report["rejected_components"]:
        assert rejected["reason"] == "classifier" and rejected["probability"] == pytest.approx(
            expected, abs=1e-4
        )
    assert "rejected (classifier, lesion probability 0.27)" in capsys.readouterr().out


def test_rim_completion_gains_are_listed_by_lesion(tmp_path: Path, tiny_model_dir: Path, phantom) -> None:  # type: ignore[no-untyped-def]
    src, model_dir = _with_postprocessing(tmp_path, tiny_model_dir, phantom, rim_completion={})
    out = tmp_path / "out"
    # A threshold just above 0 makes the whole head box one lesion, so there is always one to complete.
    args = [str(src), str(out), "--model", str(model_dir), "--device", "cpu", "--threshold", "1e-6"]
    assert segment_main(args) == 0
    report = json.loads((out / "lesions.json").read_text())
    assert set(report["rim_completion_added_mm3"]) == {f"L{m['label']}" for m in report["lesions"]} != set()
    assert all(v >= 0.0 for v in report["rim_completion_added_mm3"].values())
    assert "rim_completion" in report["timings_s"]


def test_dicom_input_also_writes_rtstruct_and_seg(tmp_path: Path, tiny_model_dir: Path, phantom) -> None:  # type: ignore[no-untyped-def]
    series = tmp_path / "series"
    write_dicom_series(phantom.image, series, patient_id="SUBJ-1")
    out = tmp_path / "out"
    # A threshold just above 0 makes the whole head box one lesion, so there is always something to export.
    args = [str(series), str(out), "--model", str(tiny_model_dir), "--device", "cpu", "--threshold", "1e-6"]
    assert segment_main(args) == 0
    report = json.loads((out / "lesions.json").read_text())
    assert len(report["lesions"]) >= 1
    rt = pydicom.dcmread(out / "rtstruct.dcm")
    seg = pydicom.dcmread(out / "seg.dcm")
    assert rt.Modality == "RTSTRUCT" and seg.Modality == "SEG"
    assert [r.ROIName for r in rt.StructureSetROISequence] == [f"L{m['label']}" for m in report["lesions"]]
    assert len(seg.SegmentSequence) == len(report["lesions"])
    # Both DICOM outputs name the model, its version and the full weights checksum.
    config = json.loads((tiny_model_dir / "config.json").read_text())
    sha, version = config["weights_sha256"], config["version"]
    assert len(sha) == 64
    algorithm = seg.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
    assert algorithm.AlgorithmName == config["name"] and algorithm.AlgorithmVersion.startswith(
        f"{version} sha256:"
    )
    assert sha in algorithm.AlgorithmParameters
    assert sha in rt.StructureSetDescription and version in rt.StructureSetDescription
    if config.get("label"):
        assert (
            config["label"] in rt.StructureSetDescription and config["label"] in algorithm.AlgorithmParameters
        )
    assert all(r.ROIGenerationDescription.startswith(config["name"]) for r in rt.StructureSetROISequence)


def test_enhanced_multiframe_input_writes_seg_and_says_why_no_rtstruct(
    tmp_path: Path, phantom, capsys
) -> None:  # type: ignore[no-untyped-def]
    """A single-frame series converted to one enhanced MR file (highdicom's legacy conversion), run through
    bm-segment with the shipped demo model on a small crop around a lesion (seconds on a CPU)."""
    from highdicom.legacy import LegacyConvertedEnhancedMRImage

    from segmentation.contours import read_seg
    from segmentation.modeldir import DEMO_MODEL_DIR

    z, y, x = (int(v.mean()) for v in np.nonzero(sitk.GetArrayFromImage(phantom.labels)))
    crop = sitk.RegionOfInterest(
        phantom.image, (48, 48, 24), (max(x - 24, 0), max(y - 24, 0), max(z - 12, 0))
    )
    files = write_dicom_series(crop, tmp_path / "single", patient_id="SUBJ-1")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # a subject id is a one-component person name
        enhanced = LegacyConvertedEnhancedMRImage(
            legacy_datasets=[pydicom.dcmread(f) for f in files],
            series_instance_uid=pydicom.uid.generate_uid(),
            series_number=2,
            sop_instance_uid=pydicom.uid.generate_uid(),
            instance_number=1,
        )
    (tmp_path / "enhanced").mkdir()
    enhanced.save_as(tmp_path / "enhanced" / "IM_0001.dcm")
    out = tmp_path / "out"
    # The demo model without its false-positive stage: the threshold below makes the crop one box-shaped
    # component, which the stage's classifier would rightly reject; this test is about the SEG.
    model_dir = tmp_path / "model"
    shutil.copytree(DEMO_MODEL_DIR, model_dir)
    config = json.loads((model_dir / "config.json").read_text())
    del config["postprocessing"]["fp_reduction"]
    (model_dir / "config.json").write_text(json.dumps(config))
    args = [str(tmp_path / "enhanced"), str(out), "--model", str(model_dir), "--device", "cpu"]
    assert segment_main([*args, "--threshold", "1e-6"]) == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "labels.nii.gz",
        "lesions.json",
        "mask.nii.gz",
        "seg.dcm",
    ]
    report = json.loads((out / "lesions.json").read_text())
    assert len(report["lesions"]) >= 1
    assert any("RTSTRUCT" in n and "single-frame" in n for n in report["notes"])
    assert "note: RTSTRUCT not written" in capsys.readouterr().out
    # the SEG lies on the enhanced image's frames and holds exactly the lesions of labels.nii.gz
    seg = read_seg(out / "seg.dcm", tmp_path / "enhanced")
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "labels.nii.gz")))
    for lesion in report["lesions"]:
        np.testing.assert_array_equal(seg.mask(f"L{lesion['label']}"), labels == lesion["label"])


@pytest.mark.slow
def test_self_check_reports_dice(tiny_model_dir: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    assert (
        segment_main(["--self-check", "--model", str(tiny_model_dir), "--device", "cpu", "--min-dice", "0"])
        == 0
    )
    out = capsys.readouterr().out
    dice = float(out.split("Dice ")[1].split(";")[0])
    assert 0.0 <= dice <= 1.0
    # An untrained network cannot reach Dice 0.99: the self-check must say so with exit status 1.
    assert (
        segment_main(
            ["--self-check", "--model", str(tiny_model_dir), "--device", "cpu", "--min-dice", "0.99"]
        )
        == 1
    )
    assert "FAILED" in capsys.readouterr().out


@pytest.mark.slow
def test_self_check_on_the_realistic_phantom_style(tiny_model_dir: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    from segmentation.phantoms import make_phantom

    argv = [
        "--self-check",
        "--model",
        str(tiny_model_dir),
        "--device",
        "cpu",
        "--min-dice",
        "0",
        "--seed",
        "3",
    ]
    assert segment_main([*argv, "--phantom-style", "realistic"]) == 0
    out = capsys.readouterr().out
    # The phantom checked is the realistic generator's for that seed: its lesions and drawn geometry.
    expected = make_phantom(3, n_lesions=4, diameter_range_mm=(6.0, 30.0), style="realistic")
    assert f"phantom seed 3, style realistic: 4 lesions, geometry {expected.geometry.name}" in out
    assert 0.0 <= float(out.split("Dice ")[1].split(";")[0]) <= 1.0
    with pytest.raises(SystemExit):
        segment_main([*argv, "--phantom-style", "lifelike"])
    assert "invalid choice: 'lifelike'" in capsys.readouterr().err


def test_tampered_model_is_refused(tmp_path: Path, tiny_model_dir: Path, phantom, capsys) -> None:  # type: ignore[no-untyped-def]
    bad = tmp_path / "bad"
    bad.mkdir()
    for f in tiny_model_dir.iterdir():
        (bad / f.name).write_bytes(f.read_bytes())
    raw = bytearray((bad / WEIGHTS_NAME).read_bytes())
    raw[-5] ^= 1
    (bad / WEIGHTS_NAME).write_bytes(bytes(raw))
    src = tmp_path / "t1c.nii.gz"
    sitk.WriteImage(phantom.image, str(src))
    assert segment_main([str(src), str(tmp_path / "o"), "--model", str(bad)]) == 2
    assert "ModelIntegrityError" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("array", "message"),
    [
        (np.zeros((64, 64, 64), np.int16), "no brain"),
        # 10 mm cube (0.5 mm voxels) against the tiny model's 64 mm window.
        (np.pad(np.full((16, 16, 16), 300, np.int16), 2), "far too small"),
    ],
)
def test_bad_images_are_refused_clearly(tmp_path: Path, tiny_model_dir: Path, capsys, array, message) -> None:  # type: ignore[no-untyped-def]
    src = tmp_path / "img.nii.gz"
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((0.5, 0.5, 0.5))
    sitk.WriteImage(image, str(src))
    assert segment_main([str(src), str(tmp_path / "o"), "--model", str(tiny_model_dir)]) == 2
    assert message in capsys.readouterr().err


def test_missing_arguments_and_input(tmp_path: Path, tiny_model_dir: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    assert segment_main([]) == 2
    assert (
        segment_main([str(tmp_path / "nothing.nii.gz"), str(tmp_path / "o"), "--model", str(tiny_model_dir)])
        == 2
    )
    assert "InputNotFoundError" in capsys.readouterr().err


@pytest.mark.parametrize(
    "option", [["--sw-batch-size", "0"], ["--threshold", "2"], ["--threshold", "0"], ["--overlap", "1"]]
)
def test_out_of_range_options_are_refused_by_the_parser(tmp_path: Path, option: list[str], capsys) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(SystemExit) as info:
        segment_main([str(tmp_path / "in.nii.gz"), str(tmp_path / "o"), *option])
    assert info.value.code == 2 and option[0] in capsys.readouterr().err


def test_an_output_folder_that_cannot_be_made_is_one_line(
    tmp_path: Path, tiny_model_dir: Path, phantom, capsys
) -> None:  # type: ignore[no-untyped-def]
    src = tmp_path / "t1c.nii.gz"
    sitk.WriteImage(phantom.image, str(src))
    blocker = tmp_path / "file"
    blocker.write_text("a file where a folder is wanted")
    assert segment_main([str(src), str(blocker / "out"), "--model", str(tiny_model_dir)]) == 2
    err = capsys.readouterr().err
    assert "cannot create the output folder" in err and "Traceback" not in err


def test_bm_train_entry_point_shows_help(capsys) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(SystemExit) as exc:
        train_main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "--freeze-encoder" in out and "--init-from" in out and "--roi-pattern" in out


def test_small_lesion_stage_additions_are_listed_with_their_features(
    tmp_path: Path, tiny_model_dir: Path, phantom, capsys
) -> None:  # type: ignore[no-untyped-def]
    # A head-sized block of brain with one bright 4 mm ball, which the small-lesion stage finds.
    rng = np.random.default_rng(2)
    zi, yi, xi = np.meshgrid(*(np.arange(121) - 60,) * 3, indexing="ij")
    arr = np.where((np.abs(xi) < 54) & (np.abs(yi) < 54) & (np.abs(zi) < 54), 1.0, 0.0)
    arr += rng.normal(0, 0.02, arr.shape)
    arr[np.sqrt((xi - 12.4) ** 2 + (yi + 9.7) ** 2 + (zi - 4.1) ** 2) <= 2.0] = 2.0
    image = sitk.GetImageFromArray((arr * 500).astype(np.int16))
    src, model_dir = _with_postprocessing(tmp_path, tiny_model_dir, phantom, small_lesions={})
    sitk.WriteImage(image, str(src))
    out = tmp_path / "out"
    # A threshold just below 1: the (untrained) network draws nothing, the stage finds the ball.
    args = [str(src), str(out), "--model", str(model_dir), "--device", "cpu", "--threshold", "0.999999"]
    assert segment_main(args) == 0
    report = json.loads((out / "lesions.json").read_text())
    assert [m["label"] for m in report["lesions"]] == [1] and set(report["small_lesions"]) == {"L1"}
    added = report["small_lesions"]["L1"]
    assert added["reason"] == "" and added["blobness"] > 0.5 and added["diameter_mm"] > 2.5
    assert np.allclose(added["center_mm"], (60 + 12.4, 60 - 9.7, 60 + 4.1), atol=1.0)  # origin 0, 1 mm
    assert "small_lesions" in report["timings_s"]
    assert "(small-lesion stage)" in capsys.readouterr().out
