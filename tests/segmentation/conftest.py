"""Fixtures of the segmentation tests: small real DICOM series written by the synthetic writer."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import SimpleITK as sitk

from segmentation.synthetic_mr import write_dicom_series

#: Shape of the small test volumes as (slices, rows, columns): big enough for lesions of 5-10 mm at
#: 0.5 mm in-plane, small enough that a test writes and reads a series in well under a second.
SMALL_SHAPE = (24, 64, 64)


def make_mr_image(
    shape: tuple[int, int, int] = SMALL_SHAPE,
    spacing_mm: tuple[float, float, float] = (0.5, 0.5, 1.0),
    origin_mm: tuple[float, float, float] = (-16.0, -20.0, 5.0),
    direction: tuple[float, ...] = (1, 0, 0, 0, 1, 0, 0, 0, 1),
    seed: int = 0,
) -> sitk.Image:
    """A deterministic int16 image with a bright ellipsoid 'head' over noise, in the given geometry."""
    rng = np.random.default_rng(seed)
    z, y, x = np.indices(shape, dtype=float)
    head = ((z - shape[0] / 2) / (shape[0] / 2.2)) ** 2 + ((y - shape[1] / 2) / (shape[1] / 2.3)) ** 2 + (
        (x - shape[2] / 2) / (shape[2] / 2.3)
    ) ** 2 <= 1
    arr = (rng.integers(0, 60, shape) + 700 * head).astype(np.int16)
    image = sitk.GetImageFromArray(arr)
    image.SetSpacing(spacing_mm)
    image.SetOrigin(origin_mm)
    image.SetDirection(tuple(float(v) for v in direction))
    return image


@pytest.fixture
def mr_image() -> sitk.Image:
    """64 x 64 x 24 axial int16 image at 0.5 x 0.5 x 1 mm."""
    return make_mr_image()


@pytest.fixture
def write_series(tmp_path: Path) -> Callable[..., tuple[Path, list[Path]]]:
    """Factory: ``write_series(image=None, name="series", **kwargs) -> (folder, files)``.

    Keyword arguments go to :func:`segmentation.synthetic_mr.write_dicom_series`.
    """

    def _write(
        image: sitk.Image | None = None, name: str = "series", **kwargs: object
    ) -> tuple[Path, list[Path]]:
        folder = tmp_path / name
        kwargs.setdefault("patient_id", "BM-TEST-001")
        files = write_dicom_series(image if image is not None else make_mr_image(), folder, **kwargs)  # type: ignore[arg-type]
        return folder, files

    return _write


@pytest.fixture
def mr_series(write_series: Callable[..., tuple[Path, list[Path]]]) -> tuple[Path, list[Path]]:
    """(folder, files) of the default small axial MR series."""
    return write_series()


@pytest.fixture
def make_image() -> Callable[..., sitk.Image]:
    """The :func:`make_mr_image` builder, for tests that need another geometry."""
    return make_mr_image


@pytest.fixture(scope="session")
def intensity_threshold() -> Callable[[float], Any]:
    """Factory: ``intensity_threshold(t)`` is a "network" whose lesion logit is ``40 x (input - t)``.

    It marks every voxel of the normalised model input brighter than ``t``, so a test knows what the
    "network" will find (the bright lesions of a distractor-free image) and can check the geometry and the
    post-processing stages of the whole pipeline against its own ground truth. torch is imported here,
    not at the top, so the tests that never run a network do not load it.
    """
    import torch

    class IntensityThreshold(torch.nn.Module):
        def __init__(self, threshold: float) -> None:
            super().__init__()
            self.threshold = threshold

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return 40.0 * (x - self.threshold)

    return IntensityThreshold


@pytest.fixture(scope="session")
def small_config_dict() -> Callable[..., dict[str, Any]]:
    """Factory: ``small_config_dict(**postprocessing)`` is the ``config.json`` mapping of a small demo
    architecture (2 mm, 32^3 windows) with threshold 0.5, 5 mm^3 components and the given postprocessing
    entries (``fp_reduction={...}``, ``rim_completion={...}``)."""
    from segmentation.train import demo_config

    def make(**post: Any) -> dict[str, Any]:
        data = demo_config(spacing_mm=2.0, patch=32, feature_size=4, hidden_size=48, num_heads=4).to_dict()
        data["postprocessing"] = {"threshold": 0.5, "min_lesion_volume_mm3": 5.0, **post}
        return data

    return make


@pytest.fixture(scope="session")
def threshold_model(
    intensity_threshold: Callable[[float], Any], small_config_dict: Callable[..., dict[str, Any]]
) -> Callable[..., Any]:
    """Factory: ``threshold_model(t, **postprocessing)`` is a LoadedModel of the small architecture (N4
    off) whose "network" is ``intensity_threshold(t)``, with the given postprocessing."""
    from dataclasses import replace

    import torch

    from segmentation.model import LoadedModel, ModelConfig, build_network

    def make(threshold: float, **post: Any) -> LoadedModel:
        config = ModelConfig.from_dict(small_config_dict(**post))
        config = replace(config, preprocessing=replace(config.preprocessing, n4_enabled=False))
        torch.manual_seed(0)
        build_network(config)  # the config must describe a network that can be built
        return LoadedModel(config, intensity_threshold(threshold), Path("."), 0)

    return make
