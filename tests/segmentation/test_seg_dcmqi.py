"""MetTrack's DICOM SEG read by dcmqi's segimage2itkimage, as a site's research pipeline reads it.

Oracle: dcmqi (QIICR's converter, the ``dcmqi`` wheel pinned in the dev extras) turns the SEG back into
one image per segment, with the segment's label and tracking pair in its metadata. Every segment, put
back on the series grid (dcmqi writes only the slices the segment's frames cover), must equal the label
mask voxel for voxel, on a single-frame axial series at 0.5 x 0.5 x 1 mm, its enhanced (multi-frame)
variant and an oblique series.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from segmentation.contours import write_seg
from segmentation.io import read_series
from segmentation.sr import tracking_uid

OBLIQUE = sitk.VersorRigid3DTransform(
    (0.2, -0.15, 0.1, float(np.sqrt(1 - 0.2**2 - 0.15**2 - 0.1**2)))
).GetMatrix()
CASES = {
    "axial": {},
    "axial-enhanced": {"multiframe": True},
    "oblique": {"direction": OBLIQUE},
}


def _tool(name: str) -> Path:
    import dcmqi

    tool = Path(dcmqi.__file__).parent / "bin" / name
    if not tool.exists():
        pytest.fail(f"dcmqi's {name} is missing: install the dev extras (the dcmqi wheel).")
    return tool


@pytest.mark.parametrize("case", list(CASES))
def test_dcmqi_reads_every_segment_back_voxel_for_voxel(tmp_path, write_series, make_image, case) -> None:
    options = dict(CASES[case])
    direction = options.pop("direction", (1, 0, 0, 0, 1, 0, 0, 0, 1))
    folder, _ = write_series(make_image(shape=(12, 40, 40), direction=direction), **options)
    series = read_series(folder)
    arr = np.zeros((12, 40, 40), dtype=np.uint16)
    arr[2:6, 5:15, 5:15] = 1
    arr[7, 20:30, 22:35] = 2  # one slice thick
    arr[9:12, 30:40, 0:6] = 3  # touches the last slice, the last row and the first column
    labels = sitk.GetImageFromArray(arr)
    labels.CopyInformation(series.image)
    names = {1: "L1", 2: "L2", 3: "L3"}
    uids = {value: tracking_uid(f"{case}-{value}") for value in names}
    seg = write_seg(
        labels, series, tmp_path / "seg.dcm", lesion_names=names,
        algorithm_name="demo", algorithm_version="1", tracking_uids=uids,
    )  # fmt: skip
    out = tmp_path / "dcmqi"
    out.mkdir()
    command = [str(_tool("segimage2itkimage")), "--inputDICOM", str(seg), "--outputDirectory", str(out)]
    result = subprocess.run(
        [*command, "--prefix", "s", "--outputType", "nrrd"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
    meta = json.loads((out / "s-meta.json").read_text())
    attributes = [a for group in meta["segmentAttributes"] for a in group]
    assert [
        (a["SegmentLabel"], a["TrackingIdentifier"], a["TrackingUniqueIdentifier"]) for a in attributes
    ] == [(names[v], names[v], uids[v]) for v in sorted(names)]
    for value in sorted(names):
        image = sitk.ReadImage(str(out / f"s-{value}.nrrd"))
        np.testing.assert_allclose(image.GetDirection(), series.image.GetDirection(), atol=1e-4)
        on_grid = sitk.Resample(image, series.image, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
        np.testing.assert_array_equal(sitk.GetArrayFromImage(on_grid) > 0, arr == value, err_msg=names[value])
