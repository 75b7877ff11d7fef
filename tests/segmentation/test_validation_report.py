"""The validation report's worst cases: a slice thumbnail each (PNG embedded in the HTML), at the slice with
the most reference voxels, reference and model outlines told apart by colour and by line style."""

from __future__ import annotations

import base64
import datetime as dt
import io
import re
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from PIL import Image

from rano.validation import ValidationCase, validate
from segmentation.validation_report import (
    MODEL_RGB,
    REFERENCE_RGB,
    case_slice,
    thumbnail_png,
    write_report,
)

SHAPE_ZYX = (16, 24, 24)


def _image(array: np.ndarray) -> sitk.Image:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((1.0, 1.0, 2.0))
    return image


def _case(name: str, shift: int, slab: int) -> tuple[ValidationCase, sitk.Image]:
    """A cube lesion of reference centred on axial slice ``slab``, the model's cube shifted by ``shift``."""
    reference = np.zeros(SHAPE_ZYX, dtype=np.uint8)
    reference[slab - 2 : slab + 3, 8:16, 8:16] = 1
    prediction = np.roll(reference, shift, axis=2)
    reference[slab, 6:18, 6:18] = 1  # its largest slice
    intensity = np.where(reference | prediction, 300.0, 100.0).astype(np.float32)
    case = ValidationCase(name, _image(reference), _image(prediction), name)
    return case, _image(intensity)


def test_report_shows_the_worst_cases_with_thumbnails(tmp_path: Path) -> None:
    shifts = {"good": 0, "fair": 2, "poor": 5, "worst": 8}
    made = {name: _case(name, shift, 5 + index) for index, (name, shift) in enumerate(shifts.items())}
    cases = [case for case, _ in made.values()]
    result = validate(cases, n_resamples=20)
    slices = {
        name: case_slice(image, case.reference, case.prediction) for name, (case, image) in made.items()
    }
    assert {name: item.index for name, item in slices.items()} == {
        "good": 5,
        "fair": 6,
        "poor": 7,
        "worst": 8,
    }

    paths = write_report(
        result, tmp_path, model={"name": "m", "version": "1"}, data={}, created=dt.datetime(2026, 1, 1),
        slices=slices,
    )  # fmt: skip
    page = paths["report.html"].read_text()
    shown = re.findall(
        r'<figure class="thumb" data-case="([^"]+)"><img src="data:image/png;base64,([^"]+)"', page
    )
    by_dice = [c.case_id for c in sorted(result.cases, key=lambda c: c.dice)]
    assert [name for name, _ in shown] == by_dice[:3] == ["worst", "poor", "fair"]
    assert "solid outline: reference" in page and "dotted outline: model" in page
    # Each thumbnail decodes, draws both outlines, and keeps the report small.
    for name, data in shown:
        png = base64.b64decode(data)
        assert len(png) < 20_000
        pixels = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
        assert max(pixels.shape[:2]) >= 150
        assert (pixels == REFERENCE_RGB).all(axis=2).any() and (pixels == MODEL_RGB).all(axis=2).any(), name


def test_thumbnail_outlines_sit_on_the_mask_borders() -> None:
    reference = np.zeros((1, 10, 12), dtype=np.uint8)
    reference[0, 2:6, 3:9] = 1
    prediction = np.zeros_like(reference)
    prediction[0, 5:9, 5:11] = 1
    item = case_slice(
        _image(np.ones_like(reference, dtype=np.float32)), _image(reference), _image(prediction)
    )
    pixels = np.asarray(Image.open(io.BytesIO(thumbnail_png(item, size_px=12))).convert("RGB"))
    assert pixels.shape[:2] == (10, 12)  # 1 mm pixels, already 12 wide: no zoom
    ref = (pixels == REFERENCE_RGB).all(axis=2)
    assert ref[2, 3:9].all() and ref[5, 3:9].all() and ref[2:6, 3].all() and ref[2:6, 8].all()
    assert not ref[3:5, 4:8].any() and ref.sum() == 2 * 6 + 2 * 2
    model = (pixels == MODEL_RGB).all(axis=2)
    outline = np.zeros_like(model)
    outline[5:9, 5:11] = True
    outline[6:8, 6:10] = False
    # Dotted: on the outline only, about half of it (the reference wins where both outlines cross).
    assert not (model & ~outline).any() and 0.3 < model.sum() / outline.sum() < 0.7
