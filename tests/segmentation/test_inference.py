"""Inference: sliding window, native geometry, lesion table, determinism, bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from rano.measure import measure_lesions
from segmentation.inference import ImageTooSmallError, InferenceOptions, segment_image
from segmentation.model import DeviceUnavailableError, LoadedModel, build_network, load_model, save_model_dir
from segmentation.phantoms import HeadPose, LesionSpec, load_template, render_phantom
from segmentation.preprocess import EmptyImageError, mask_to_model_space, preprocess
from segmentation.probability import to_float
from segmentation.train import demo_config, dice_score


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> LoadedModel:
    torch.manual_seed(0)
    cfg = demo_config(spacing_mm=2.0, patch=32, feature_size=4, hidden_size=48, num_heads=4)
    return load_model(save_model_dir(build_network(cfg), cfg, tmp_path_factory.mktemp("m") / "tiny"))


@pytest.fixture(scope="module")
def oblique_phantom():  # type: ignore[no-untyped-def]
    """Three solid lesions, sagittal 1 mm acquisition, head rotated and shifted, no distractors."""
    anat = load_template()
    deep = np.argwhere((anat.wm > 0.9) & (anat.depth_mm > 22))
    rng = np.random.default_rng(0)
    specs = []
    picks = deep[rng.choice(len(deep), 200, replace=False)]
    for idx in picks:
        center = anat.reference.TransformIndexToPhysicalPoint([int(idx[2]), int(idx[1]), int(idx[0])])
        if all(np.linalg.norm(np.subtract(center, s.center_mm)) > 35 for s in specs):
            specs.append(
                LesionSpec(len(specs) + 1, tuple(center), 14.0, enhancement=1.7, shape_seed=len(specs))
            )
        if len(specs) == 3:
            break
    return render_phantom(
        specs, seed=3, geometry="sagittal_1mm", pose=HeadPose((4.0, -3.0, 6.0), (5.0, -4.0, 3.0)),
        skull=False, distractors=False, noise_fraction=0.01, bias_field_strength=0.1,
    )  # fmt: skip


def test_pipeline_maps_predictions_back_to_the_native_grid(  # type: ignore[no-untyped-def]
    tiny_model: LoadedModel, oblique_phantom, intensity_threshold
) -> None:
    pre = preprocess(oblique_phantom.image, tiny_model.config.preprocessing)
    truth_model_space = mask_to_model_space(oblique_phantom.mask, pre) > 0
    head = pre.array > 0
    lesion_level = np.median(pre.array[truth_model_space])
    tissue_level = np.percentile(pre.array[head & ~truth_model_space], 95)
    assert lesion_level > tissue_level
    model = LoadedModel(
        tiny_model.config, intensity_threshold((lesion_level + tissue_level) / 2), Path("."), 0
    )
    result = segment_image(oblique_phantom.image, model, InferenceOptions(device="cpu"))
    for im in (result.mask, result.labels):
        assert im.GetSize() == oblique_phantom.image.GetSize()
        assert im.GetOrigin() == oblique_phantom.image.GetOrigin()
        assert im.GetDirection() == oblique_phantom.image.GetDirection()
    pred = sitk.GetArrayFromImage(result.mask)
    truth = sitk.GetArrayFromImage(oblique_phantom.mask)
    # The model works at 2 mm and the native grid is 1 mm: boundaries differ by about a voxel.
    assert dice_score(pred, truth) > 0.75
    assert len(result.lesions) == 3
    # Each lesion's centroid is within 2 mm of the phantom's (pose-mapped) lesion centre.
    centres = np.array([lesion.center_mm for lesion in oblique_phantom.lesions])
    for m in result.lesions:
        assert np.min(np.linalg.norm(centres - np.asarray(m.centroid_mm), axis=1)) < 2.0
        assert 10.0 < m.longest_diameter_mm < 20.0


def test_lesion_table_is_rano_measure_of_the_labels(tiny_model: LoadedModel, oblique_phantom) -> None:  # type: ignore[no-untyped-def]
    result = segment_image(oblique_phantom.image, tiny_model, InferenceOptions(device="cpu"))
    expected = measure_lesions(result.labels, oblique_phantom.image, relabel=False)
    assert [m.to_dict() for m in result.lesions] == [m.to_dict() for m in expected]
    # Components under the model's smallest lesion volume were dropped.
    voxel_mm3 = float(np.prod(oblique_phantom.image.GetSpacing()))
    assert all(m.voxel_count * voxel_mm3 >= 5.0 for m in result.lesions)
    assert {"preprocess.n4", "network", "to_native", "components", "measure"} <= set(result.timings_s)
    assert result.n_windows >= 8 and result.device == "cpu"


def test_cpu_inference_is_deterministic(tiny_model: LoadedModel, oblique_phantom) -> None:  # type: ignore[no-untyped-def]
    opts = InferenceOptions(device="cpu", keep_probability=True)
    a = segment_image(oblique_phantom.image, tiny_model, opts)
    b = segment_image(oblique_phantom.image, tiny_model, opts)
    assert a.probability is not None and b.probability is not None
    assert np.array_equal(
        sitk.GetArrayViewFromImage(a.probability), sitk.GetArrayViewFromImage(b.probability)
    )


def test_two_channel_softmax_models_are_supported() -> None:
    data = demo_config(spacing_mm=2.0, patch=32, feature_size=4, hidden_size=48).to_dict()
    data["architecture"]["out_channels"] = 2
    from segmentation.model import ModelConfig

    cfg = ModelConfig.from_dict(data)
    net = build_network(cfg).eval()
    img = sitk.GetImageFromArray(np.pad(np.full((30, 30, 30), 100, np.int16), 9))
    img.SetSpacing((2.0, 2.0, 2.0))
    result = segment_image(
        img, LoadedModel(cfg, net, Path("."), 0), InferenceOptions(device="cpu", keep_probability=True)
    )
    assert result.probability is not None and result.probability.GetPixelID() == sitk.sitkUInt16
    prob = to_float(sitk.GetArrayViewFromImage(result.probability))
    assert prob.min() >= 0.0 and prob.max() <= 1.0 and prob.max() > 0.0


def test_all_zero_image_is_refused(tiny_model: LoadedModel) -> None:
    with pytest.raises(EmptyImageError, match="no brain"):
        segment_image(sitk.Image(64, 64, 64, sitk.sitkInt16), tiny_model)


def test_image_far_too_small_for_the_window_is_refused(tiny_model: LoadedModel) -> None:
    arr = np.zeros((6, 6, 6), np.int16)
    arr[1:5, 1:5, 1:5] = 500
    img = sitk.GetImageFromArray(arr)  # 6 mm cube against a 64 mm window
    with pytest.raises(ImageTooSmallError, match="far too small"):
        segment_image(img, tiny_model)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_cuda_without_cuda_is_refused(tiny_model: LoadedModel, oblique_phantom) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(DeviceUnavailableError, match="CUDA"):
        segment_image(oblique_phantom.image, tiny_model, InferenceOptions(device="cuda"))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_bf16_matches_cpu(tiny_model: LoadedModel, oblique_phantom) -> None:  # type: ignore[no-untyped-def]
    cpu = segment_image(oblique_phantom.image, tiny_model, InferenceOptions(device="cpu"))
    gpu = segment_image(oblique_phantom.image, tiny_model, InferenceOptions(device="cuda", amp=True))
    assert dice_score(sitk.GetArrayFromImage(cpu.mask), sitk.GetArrayFromImage(gpu.mask)) > 0.9
