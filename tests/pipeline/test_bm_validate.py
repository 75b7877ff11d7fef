"""``bm-validate`` end to end: the demo model on three small synthetic visits of one patient (NIfTI pairs),
its report (HTML that opens offline, JSON, CSV) checked against MONAI on the masks it wrote."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from monai.metrics import compute_dice

from segmentation.modeldir import DEMO_MODEL_DIR
from segmentation.validate import main, model_identity
from tests.pipeline.conftest import SyntheticPatient


def test_bm_validate_writes_a_self_contained_report_of_the_demo_model(
    synthetic_patient: SyntheticPatient, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    visits = {}
    for phantom, label, date in zip(
        synthetic_patient.phantoms, synthetic_patient.labels, synthetic_patient.dates, strict=True
    ):
        sitk.WriteImage(phantom.image, str(data / f"SUBJ_{label}_t1c.nii.gz"))
        sitk.WriteImage(phantom.mask, str(data / f"SUBJ_{label}_mask.nii.gz"))
        visits[f"SUBJ_{label}"] = {"patient": "SUBJ", "date": date.isoformat()}
    (tmp_path / "visits.json").write_text(json.dumps(visits))
    out = tmp_path / "report"
    argv = ["--data", str(data), "--visits", str(tmp_path / "visits.json"), "--device", "cpu"]

    assert main([str(out), *argv, "--resamples", "50"]) == 0

    report = json.loads((out / "report.json").read_text())
    assert report["model"] == model_identity(DEMO_MODEL_DIR) and report["model"]["not_for_clinical_use"]
    assert report["data"]["cases"] == 3 and report["n_patients"] == 1
    assert set(report["figures"]) == {
        "dice_per_case",
        "detection_by_size",
        "volume_bland_altman",
        "response_confusion",
    }
    assert len(report["responses"]["pairs"]) == 2  # two follow-ups compared with the reference read
    assert report["ci95"]["dice"] == [None, None]  # one patient: no bootstrap interval
    # Per-case Dice equals MONAI's on the reference mask and the model's mask the command wrote.
    with (out / "cases.csv").open() as handle:
        rows = {row["case_id"]: row for row in csv.DictReader(handle)}
    for case_id, row in rows.items():
        ref = sitk.GetArrayFromImage(sitk.ReadImage(str(data / f"{case_id}_mask.nii.gz"))) != 0
        pred = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "masks" / f"{case_id}_model.nii.gz"))) != 0
        onehot = [torch.from_numpy(np.stack([~m, m]).astype(np.float32))[None] for m in (pred, ref)]
        expected = float(compute_dice(*onehot, include_background=False, ignore_empty=False))
        assert float(row["dice"]) == pytest.approx(expected, abs=1e-6)
    # The HTML carries plotly.js itself (no CDN, opens offline) and names the model's checksums.
    page = (out / "report.html").read_text()
    assert "<script src=" not in page and "Plotly.newPlot" in page and len(page) > 1_000_000
    assert report["model"]["weights_sha256"] in page and report["model"]["config_sha256"] in page
    assert "not for clinical use" in page
    for name in ("aggregate.csv", "lesions.csv", "detection_by_size.csv", "responses.csv"):
        assert (out / name).stat().st_size > 0

    # Bad input: exit status 2 with one line on stderr.
    assert main([str(tmp_path / "r2"), "--data", str(tmp_path / "nothing-here")]) == 2


def test_bm_validate_on_held_out_realistic_phantoms(tmp_path: Path) -> None:
    """``--phantoms N --phantom-style realistic``: the harder synthetic style (sinuses, falx, veins,
    scanner variety), recorded in the report; its Dice is MONAI's against the phantom's own truth."""
    from segmentation.train import phantom_sources

    out = tmp_path / "report"
    argv = ["--phantoms", "1", "--phantom-style", "realistic", "--seed", "4242", "--device", "cpu"]
    assert main([str(out), *argv, "--resamples", "10"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["data"]["style"] == "realistic" and report["data"]["seed"] == 4242
    assert report["data"]["cases"] == 1
    with (out / "cases.csv").open() as handle:
        (row,) = list(csv.DictReader(handle))
    (source,) = phantom_sources(1, 4242, "realistic")
    assert row["case_id"] == source.case_id
    image, truth = source.load()
    assert image.GetSpacing() != (2.0, 2.0, 2.0)  # the realistic style draws its own voxel size
    ref = sitk.GetArrayFromImage(truth) != 0
    pred = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "masks" / f"{source.case_id}_model.nii.gz"))) != 0
    onehot = [torch.from_numpy(np.stack([~m, m]).astype(np.float32))[None] for m in (pred, ref)]
    expected = float(compute_dice(*onehot, include_background=False, ignore_empty=False))
    assert float(row["dice"]) == pytest.approx(expected, abs=1e-6)
    with pytest.raises(SystemExit) as refused:  # argparse refuses an unknown style
        main([str(tmp_path / "r2"), "--phantoms", "1", "--phantom-style", "photo"])
    assert refused.value.code == 2
