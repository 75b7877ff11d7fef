"""Every DICOM object MetTrack writes or stores, checked by dciodvfy (Debian's dicom3tools).

Oracle: dciodvfy, David Clunie's validator of the IODs of PS3.3, run on each object as a site's PACS
administrator would. It must report no error at all; its warnings must be among those the README's
imaging section lists and justifies (:data:`JUSTIFIED_WARNINGS`), so a new kind of warning fails too.

The objects, on one small series (8 slices of 32 x 32): the synthetic MR writer's single-frame and
enhanced (legacy converted, multi-frame) series, the RTSTRUCT, the SEG of each, the TID 1500 SR, an
oblique series and its RTSTRUCT, and the de-identified copies ingest stores of both axial series, made
from sources carrying identifying attributes.
The SR carries everything it can: tracking UIDs, RANO-BM roles, a signed response.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from segmentation.contours import write_rtstruct, write_seg
from segmentation.io import ingest_series, read_series
from segmentation.sr import LesionMeasurement, VisitResponse, tracking_uid, write_measurement_report
from segmentation.synthetic_mr import write_dicom_series

#: dciodvfy warnings the README's imaging section justifies, as patterns of the warning's text.
JUSTIFIED_WARNINGS = (
    # the synthetic writer's Image Type value 3 "M" (magnitude) is what Siemens scanners write
    r"Unrecognized defined term <M> for value 3 of attribute <(Image|Frame) Type>",
    # de-identified copies: the profile empties Study Date, Study Time and Study ID (Type 2, action Z)
    r"Missing attribute or value that would be needed to build DICOMDIR - Study (Date|Time|ID)",
    # SR: MetTrack's private coding scheme of RANO-BM roles and responses (no standard code names them),
    # declared in the Coding Scheme Identification Sequence
    r"Unrecognized defined term <99METTRACK> for value 1 of attribute <Coding Scheme Designator>",
    # de-identified copies: the trial subject id as Patient Name is a name of one component
    r"Value dubious for this VR - \(0x0010,0x0010\) PN Patient's Name .* - Retired Person Name form",
)

#: Identifying attributes of the sources de-identification has to deal with.
IDENTIFYING = {
    "PatientName": "Doe^Jane",
    "PatientBirthDate": "19610203",
    "AccessionNumber": "ACC-1",
    "ReferringPhysicianName": "House^Gregory",
    "OperatorsName": "Wilson^James",
    "InstitutionName": "Saint Elsewhere Hospital",
    "StationName": "MRI-7",
    "StudyID": "S-1",
}

OBJECTS = (
    "mr",
    "mr-enhanced",
    "rtstruct",
    "seg",
    "seg-enhanced",
    "sr",
    "stored-mr",
    "stored-mr-enhanced",
    "mr-oblique",
    "rtstruct-oblique",
)


def dciodvfy(path: Path) -> list[str]:
    """The Error and Warning lines dciodvfy reports on ``path``."""
    tool = shutil.which("dciodvfy")
    if tool is None:
        pytest.fail(
            "dciodvfy is missing: run scripts/ensure-dicom-tools.sh (or 'apt-get install -y dicom3tools')."
        )
    result = subprocess.run([tool, str(path)], capture_output=True, text=True, timeout=60)
    lines = (result.stdout + result.stderr).splitlines()
    return [line for line in lines if line.startswith(("Error", "Warning"))]


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> dict[str, Path]:
    """Object name -> file, every object written once for the module."""
    root = tmp_path_factory.mktemp("objects")
    image = sitk.GetImageFromArray(np.random.default_rng(0).integers(0, 800, (8, 32, 32)).astype(np.int16))
    image.SetSpacing((0.5, 0.5, 1.0))
    image.SetOrigin((-8.0, -8.0, 5.0))
    single = write_dicom_series(image, root / "mr", patient_id="MRN-1234", **IDENTIFYING)
    enhanced = write_dicom_series(
        image, root / "mr-enhanced", patient_id="MRN-1234", multiframe=True, **IDENTIFYING
    )
    arr = np.zeros((8, 32, 32), dtype=np.uint16)
    arr[2:5, 10:16, 10:16] = 1
    arr[4:6, 20:24, 20:24] = 2
    names = {1: "L1", 2: "L2"}
    objects = {"mr": single[0], "mr-enhanced": enhanced[0]}
    for key, folder in (("", root / "mr"), ("-enhanced", root / "mr-enhanced")):
        series = read_series(folder)
        labels = sitk.GetImageFromArray(arr)
        labels.CopyInformation(series.image)
        objects[f"seg{key}"] = write_seg(
            labels, series, root / f"seg{key}.dcm", lesion_names=names,
            algorithm_name="demo", algorithm_version="1",
            algorithm_parameters={"weights_sha256": "0" * 64, "label": "demo – test"},
        )  # fmt: skip
        stored = ingest_series(folder, root / f"stored{key}", subject_id="BM-001")
        objects[f"stored-mr{key}"] = stored.series.source_paths[0]
        if not key:
            objects["rtstruct"] = write_rtstruct(
                labels, series, root / "rtstruct.dcm", lesion_names=names, provenance="demo 1 – test"
            )
    # an oblique series and its RTSTRUCT (contour points off the axial planes)
    image.SetDirection(
        sitk.VersorRigid3DTransform(
            (0.2, -0.15, 0.1, float(np.sqrt(1 - 0.2**2 - 0.15**2 - 0.1**2)))
        ).GetMatrix()
    )
    objects["mr-oblique"] = write_dicom_series(image, root / "mr-oblique", patient_id="MRN-1234")[0]
    oblique = read_series(root / "mr-oblique")
    labels = sitk.GetImageFromArray(arr)
    labels.CopyInformation(oblique.image)
    objects["rtstruct-oblique"] = write_rtstruct(
        labels, oblique, root / "rtstruct-oblique.dcm", lesion_names=names
    )
    objects["sr"] = write_measurement_report(
        objects["seg"],
        single,
        [
            LesionMeasurement("L1", 6.0, 5.5, 120.0, tracking_uid=tracking_uid("a"), role="target"),
            LesionMeasurement("L2", 4.0, 4.0, 32.0, tracking_uid=tracking_uid("b"), role="new"),
        ],
        root / "sr.dcm",
        response=VisitResponse("PD", signed=True, signer="Reader^Rita"),
        time_point="FU1",
    )
    return objects


@pytest.mark.parametrize("name", OBJECTS)
def test_dciodvfy_reports_no_error_and_only_justified_warnings(written, name) -> None:
    report = dciodvfy(written[name])
    assert [line for line in report if line.startswith("Error")] == []
    unjustified = [
        line
        for line in report
        if line.startswith("Warning") and not any(re.search(p, line) for p in JUSTIFIED_WARNINGS)
    ]
    assert unjustified == []
