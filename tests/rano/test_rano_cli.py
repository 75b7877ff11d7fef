"""``rano-assess`` on example patients written as NIfTI masks by the tests (issue 3, item 5)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from rano_cases import write_case

from rano import ENGINE_VERSION
from rano.cli import main

L1_CENTRE, L2_CENTRE = (20.0, 22.0, 20.0), (45.0, 42.0, 26.0)


def run(capsys, *argv: str) -> tuple[int, dict | None, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, (json.loads(captured.out) if code == 0 else None), captured.err


def two_lesions(r1: float, r2: float) -> list:
    return [(L1_CENTRE, r1), (L2_CENTRE, r2)]


CASES = {
    # name: (visits, expected overall per follow-up, best overall response)
    "partial-response-confirmed": (
        [
            ("2024-01-08", two_lesions(12.5, 8)),
            ("2024-03-08", two_lesions(8, 5)),
            ("2024-05-08", two_lesions(8, 5)),
        ],
        ["PR", "PR"],
        "PR",
    ),
    "complete-response": (
        [("2024-01-08", two_lesions(12.5, 8)), ("2024-03-08", []), ("2024-05-08", [])],
        ["CR", "CR"],
        "CR",
    ),
    "stable-disease": (
        [("2024-01-08", two_lesions(12.5, 8)), ("2024-03-08", two_lesions(11.5, 7.5))],
        ["SD"],
        "SD",
    ),
    "progression-by-growth": (
        [("2024-01-08", two_lesions(8, 6)), ("2024-03-08", two_lesions(11.5, 6))],
        ["PD"],
        "PD",
    ),
    "progression-by-new-lesion": (
        [
            ("2024-01-08", two_lesions(12.5, 8)),
            ("2024-03-08", [*two_lesions(12.5, 8), ((40.0, 12.0, 32.0), 4.0)]),
        ],
        ["PD"],
        "PD",
    ),
    "no-measurable-disease": (
        [("2024-01-08", [(L1_CENTRE, 3.0)]), ("2024-03-08", [(L1_CENTRE, 3.0)])],
        ["NON-CR/NON-PD"],
        "NON-CR/NON-PD",
    ),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_example_cases(tmp_path: Path, capsys, name: str) -> None:
    visits, expected, bor = CASES[name]
    path = write_case(
        tmp_path,
        name,
        [{"visit": f"V{i}", "date": d, "spheres": s} for i, (d, s) in enumerate(visits)],
    )
    code, out, err = run(capsys, path)
    assert code == 0, err
    assert out["subject_id"] == name and out["engine_version"] == ENGINE_VERSION
    assert out["settings"]["max_targets"] == 5
    assert out["visits"][0]["overall_response"] is None and out["visits"][0]["target_response"] is None
    assert [v["overall_response"] for v in out["visits"][1:]] == expected
    assert out["best_overall_response"] == bor
    for v in out["visits"][1:]:
        assert v["reasons"] and v["new_lesions"] in ("none", "equivocal", "unequivocal")
        assert v["confirmed"] in ((True, False) if v["overall_response"] in ("CR", "PR") else (None,))
    if "progression" in name:
        assert out["progression_date"] == "2024-03-08"


def test_visit_without_imaging_is_ne(tmp_path: Path, capsys) -> None:
    """Section 6: missing imaging -> NE (``"mask": null``); the next visit is assessed normally."""
    path = write_case(
        tmp_path,
        "S010",
        [
            {"visit": "BL", "date": "2024-01-08", "spheres": two_lesions(12.5, 8)},
            {"visit": "FU1", "date": "2024-03-08", "spheres": []},
            {"visit": "FU2", "date": "2024-05-08", "spheres": two_lesions(8, 5)},
        ],
    )
    data = json.loads(path.read_text())
    data["visits"][1]["mask"] = None
    path.write_text(json.dumps(data))
    code, out, err = run(capsys, path)
    assert code == 0, err
    assert [v["overall_response"] for v in out["visits"]] == [None, "NE", "PR"]
    assert out["visits"][1]["sum_ld_mm"] is None
    data["visits"][0]["mask"] = None
    path.write_text(json.dumps(data))
    code, _, err = run(capsys, path)
    assert code == 2 and "needs a mask" in err


def test_output_fields_for_a_target_lesion(tmp_path: Path, capsys) -> None:
    path = write_case(
        tmp_path,
        "S001",
        [
            {"visit": "BL", "date": "2024-01-08", "spheres": two_lesions(12.5, 8), "steroids": "none"},
            {
                "visit": "FU1",
                "date": "2024-03-08",
                "spheres": two_lesions(9, 6),
                "clinical_status": "improved",
            },
        ],
    )
    code, out, _ = run(capsys, path)
    assert code == 0
    fu1 = out["visits"][1]
    assert fu1["nadir_sum_ld_mm"] == out["visits"][0]["sum_ld_mm"]
    assert fu1["pct_change_from_baseline"] == pytest.approx(
        100 * (fu1["sum_ld_mm"] - out["visits"][0]["sum_ld_mm"]) / out["visits"][0]["sum_ld_mm"], abs=0.2
    )
    assert fu1["volumetric_response"] in ("PR", "SD") and "volumetric" in fu1
    l1 = next(lesion for lesion in out["lesions"] if lesion["lesion_id"] == "L1")
    assert l1["role"] == "target" and l1["first_seen"] == "BL"
    bl = l1["measurements"]["BL"]
    # A 25 mm sphere on a 1 mm grid: LD within one voxel diagonal.
    assert abs(bl["longest_diameter_mm"] - 25.0) <= 1.5 and bl["measurable"] and bl["present"]
    (a, b) = bl["caliper_mm"]
    assert (
        a[2] == b[2]
        and abs(sum((p - q) ** 2 for p, q in zip(a, b, strict=True)) ** 0.5 - bl["longest_diameter_mm"])
        < 0.05
    )


def test_criteria_and_settings_options(tmp_path: Path, capsys) -> None:
    path = write_case(
        tmp_path,
        "S002",
        [
            {"visit": "BL", "date": "2024-01-08", "spheres": two_lesions(12.5, 8)},
            {"visit": "FU1", "date": "2024-03-08", "spheres": two_lesions(10, 6.5)},
        ],
    )
    code, out, _ = run(capsys, path, "--criteria", "rano-bm")
    assert (
        code == 0
        and out["visits"][1]["overall_response"] == "SD"
        and out["visits"][1]["volumetric_response"] is None
    )
    code, vol, _ = run(capsys, path, "--criteria", "volumetric")
    # Volumes fell to about half: (10/12.5)^3 and (6.5/8)^3 -> about -48%, short of the -65% PR.
    fu1 = vol["visits"][1]
    assert code == 0 and fu1["overall_response"] == "SD" and fu1["volumetric_response"] == "SD"
    assert fu1["nadir_sum_volume_mm3"] == vol["visits"][0]["sum_volume_mm3"]
    assert -55 < fu1["pct_change_from_baseline"] < -42
    settings = tmp_path / "settings.json"
    settings.write_text(json.dumps({"pr_threshold": -15}))
    code, loose, _ = run(capsys, path, "--criteria", "rano-bm", "--settings", settings)
    assert (
        code == 0
        and loose["visits"][1]["overall_response"] == "PR"
        and loose["settings"]["pr_threshold"] == -15
    )


def test_registration_with_images(tmp_path: Path, capsys) -> None:
    """Follow-up positioned 14 mm off (anatomy and lesions, farther than the lesions' size and the
    10 mm matching gate): without images the lesions look new,
    with images the rigid registration brings them back and they keep their ids."""
    visits = [
        {"visit": "BL", "date": "2024-01-08", "spheres": two_lesions(6, 4)},
        {"visit": "FU1", "date": "2024-03-08", "spheres": two_lesions(6, 4), "shift_mm": (14.0, 0.0, 0.0)},
    ]
    grid = {"size_xyz": (80, 72, 56)}
    path = write_case(tmp_path / "img", "S003", visits, images=True, **grid)
    code, out, err = run(capsys, path)
    assert code == 0, err
    assert out["visits"][1]["new_lesions"] == "none" and out["visits"][1]["overall_response"] == "SD"
    assert [lesion["lesion_id"] for lesion in out["lesions"]] == ["L1", "L2"]
    masks_only = write_case(tmp_path / "masks", "S003", visits, images=False, **grid)
    code, out, err = run(capsys, masks_only)
    assert code == 0, err
    assert out["visits"][1]["new_lesions"] == "unequivocal" and out["visits"][1]["overall_response"] == "PD"


def _case(tmp_path: Path, **changes) -> Path:
    visits = [
        {"visit": "BL", "date": "2024-01-08", "spheres": two_lesions(12.5, 8)},
        {"visit": "FU1", "date": "2024-03-08", "spheres": two_lesions(12, 8)},
    ]
    path = write_case(tmp_path, "S009", visits)
    data = json.loads(path.read_text())
    for key, value in changes.items():
        data["visits"][1][key] = value
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"mask": "missing.nii.gz"}, "not found"),
        ({"mask": "garbage.nii.gz"}, "not a readable image"),
        ({"date": "2023-12-01"}, "out of order"),
        ({"date": "08/03/2024"}, "YYYY-MM-DD"),
        # Other ISO 8601 forms Python's date.fromisoformat accepts are not YYYY-MM-DD either.
        ({"date": "2024-W09-5"}, "date must be YYYY-MM-DD, got '2024-W09-5'"),
        ({"date": "20240301"}, "date must be YYYY-MM-DD, got '20240301'"),
        ({"date": 20240301}, "date must be YYYY-MM-DD, got 20240301"),
        ({"date": "2024-02-30"}, "date must be YYYY-MM-DD"),
        ({"steroids": "lots"}, "steroids must be one of none | decreased | stable | increased"),
        ({"clinical_status": "better"}, "clinical_status must be one of"),
        ({"colour": "blue"}, "unknown field"),
        ({"mask": "far.nii.gz"}, "physical space"),
        ({"image": "far.nii.gz"}, "different grids"),
        ({"mask": 3}, "file path or null"),
    ],
)
def test_bad_input_exits_non_zero_with_one_line(tmp_path: Path, capsys, changes, words) -> None:
    path = _case(tmp_path, **changes)
    (tmp_path / "garbage.nii.gz").write_bytes(b"not an image at all")
    far = sitk.ReadImage(str(tmp_path / "FU1.nii.gz"))
    far.SetOrigin((900.0, 0.0, 0.0))
    sitk.WriteImage(far, str(tmp_path / "far.nii.gz"))
    code, _, err = run(capsys, path)
    assert code == 2
    assert err.count("\n") == 1 and words in err, err


def test_bad_settings_and_missing_visits_file(tmp_path: Path, capsys) -> None:
    path = _case(tmp_path)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"pr_thresold": -30}))
    code, _, err = run(capsys, path, "--settings", bad)
    assert code == 2 and "unknown setting" in err and err.count("\n") == 1
    code, _, err = run(capsys, tmp_path / "nope.json")
    assert code == 2 and "not found" in err


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["--criteria", "recist", "VISITS"], "argument --criteria: invalid choice: 'recist'"),
        ([], "the following arguments are required: visits"),
        (["VISITS", "--colour", "blue"], "unrecognized arguments: --colour blue"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(tmp_path: Path, capsys, argv, words) -> None:
    """README: bad input exits with status 2 and one line on stderr, bad arguments too (no usage block)."""
    path = _case(tmp_path)
    code = main([str(path) if a == "VISITS" else a for a in argv])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("rano-assess: error: ") and words in err, err


def test_help_still_prints_the_usage(capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    assert "usage: rano-assess" in capsys.readouterr().out


def test_console_script_runs(tmp_path: Path) -> None:
    path = _case(tmp_path)
    exe = Path(sys.executable).with_name("rano-assess")
    if not exe.exists():
        pytest.skip("console script not installed in this environment")
    done = subprocess.run([str(exe), str(path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["visits"][1]["overall_response"] == "SD"


def test_labelled_masks_keep_one_lesion_per_label(tmp_path: Path, capsys) -> None:
    """Two touching lesions given as labels 1 and 2 stay two lesions; as a binary mask they are one."""
    arr = np.zeros((40, 48, 64), np.uint8)
    arr[10:25, 10:30, 10:30] = 1
    arr[10:25, 10:30, 30:45] = 2  # touches label 1
    visits = []
    for name, date in (("BL", "2024-01-08"), ("FU1", "2024-03-08")):
        for kind, data in (("labelled", arr), ("binary", (arr > 0).astype(np.uint8))):
            folder = tmp_path / kind
            folder.mkdir(exist_ok=True)
            sitk.WriteImage(sitk.GetImageFromArray(data), str(folder / f"{name}.nii.gz"))
        visits.append({"visit": name, "date": date, "mask": f"{name}.nii.gz"})
    for kind, expected in (("labelled", ["L1", "L2"]), ("binary", ["L1"])):
        path = tmp_path / kind / "visits.json"
        path.write_text(json.dumps({"subject_id": "S011", "visits": visits}))
        code, out, err = run(capsys, path)
        assert code == 0, err
        assert [lesion["lesion_id"] for lesion in out["lesions"]] == expected, kind


def test_target_merged_into_a_larger_non_target_keeps_the_mass(tmp_path: Path, capsys) -> None:
    """rano-bm.md section 3: a merged mass is assigned to the target it overlaps. With one target
    (L1, 14 mm at baseline) merging at FU2 into a non-target that overlaps the mass more, the target
    carries the whole mass (about 36 mm against its 7 mm at the FU1 nadir): PD, not a shrinking target."""
    target, non_target = (20.0, 32.0, 24.0), (40.0, 32.0, 24.0)
    bridge = [((x, 32.0, 24.0), 3.0) for x in range(20, 41, 2)]
    grid = {"size_xyz": (80, 64, 48)}
    visits = [
        {"visit": "BL", "date": "2024-01-08", "spheres": [(target, 7.0), (non_target, 6.5)]},
        {"visit": "FU1", "date": "2024-03-08", "spheres": [(target, 3.0), (non_target, 9.0)]},
        {"visit": "FU2", "date": "2024-05-08", "spheres": [(target, 5.0), (non_target, 10.0), *bridge]},
    ]
    path = write_case(tmp_path, "S012", visits, **grid)
    settings = tmp_path / "settings.json"
    settings.write_text(json.dumps({"max_targets": 1}))
    code, out, err = run(capsys, path, "--settings", settings)
    assert code == 0, err
    lesions = {lesion["lesion_id"]: lesion for lesion in out["lesions"]}
    assert lesions["L1"]["role"] == "target" and lesions["L2"]["role"] == "non_target"
    fu1, fu2 = out["visits"][1], out["visits"][2]
    assert fu1["overall_response"] == "PR"
    assert fu2["sum_ld_mm"] > 30 and fu2["target_response"] == "PD" and fu2["overall_response"] == "PD"
    assert out["progression_date"] == "2024-05-08"


def test_non_target_merged_into_a_target_is_not_non_target_cr(tmp_path: Path, capsys) -> None:
    """rano-bm.md sections 3-4: a target (r 8 mm) and a small non-target (r 3 mm) nearby grow and
    touch at FU1, one component. The mass is measured once, as the target; the non-target is inside
    it, not gone: non-target NON-CR/NON-PD, never CR."""
    target, non_target = (20.0, 32.0, 24.0), (34.0, 32.0, 24.0)
    visits = [
        {"visit": "BL", "date": "2024-01-08", "spheres": [(target, 8.0), (non_target, 3.0)]},
        {"visit": "FU1", "date": "2024-03-08", "spheres": [(target, 9.0), (non_target, 5.0)]},
    ]
    code, out, err = run(capsys, write_case(tmp_path, "S013", visits), "--criteria", "rano-bm")
    assert code == 0, err
    lesions = {lesion["lesion_id"]: lesion for lesion in out["lesions"]}
    assert lesions["L1"]["role"] == "target" and lesions["L2"]["role"] == "non_target"
    assert lesions["L2"]["measurements"]["FU1"]["merged_into"] == "L1"
    fu1 = out["visits"][1]
    assert fu1["non_target_response"] == "NON-CR/NON-PD", fu1["reasons"]
    assert "all non-target lesions absent" not in " ".join(fu1["reasons"])


def test_labelled_masks_drop_parts_under_the_minimum_volume(tmp_path: Path, capsys) -> None:
    """rano-bm.md section 1: parts under min_lesion_volume_mm3 (5) are noise, labelled or not. At FU1
    label 2 is one voxel (1 mm3) and label 3 two separate voxels: no new lesion. Label 4, a 5-voxel
    rod (exactly 5 mm3), is kept: a new lesion, but equivocal (LD 1 mm)."""
    arr = np.zeros((40, 48, 64), np.uint8)
    arr[10:25, 10:30, 10:30] = 1
    sitk.WriteImage(sitk.GetImageFromArray(arr), str(tmp_path / "BL.nii.gz"))
    arr[30, 40, 50] = 2
    arr[32, 5, 5] = arr[38, 5, 5] = 3
    noisy = arr.copy()
    sitk.WriteImage(sitk.GetImageFromArray(noisy), str(tmp_path / "FU1.nii.gz"))
    arr[30:35, 40, 20] = 4
    sitk.WriteImage(sitk.GetImageFromArray(arr), str(tmp_path / "FU2.nii.gz"))
    visits = [
        {"visit": name, "date": date, "mask": f"{name}.nii.gz"}
        for name, date in (("BL", "2024-01-08"), ("FU1", "2024-03-08"), ("FU2", "2024-05-08"))
    ]
    path = tmp_path / "visits.json"
    path.write_text(json.dumps({"subject_id": "S013", "visits": visits}))
    code, out, err = run(capsys, path)
    assert code == 0, err
    assert out["visits"][1]["new_lesions"] == "none" and out["visits"][1]["overall_response"] == "SD"
    assert out["visits"][2]["new_lesions"] == "equivocal" and out["visits"][2]["overall_response"] == "SD"
    assert [lesion["lesion_id"] for lesion in out["lesions"]] == ["L1", "L2"]
