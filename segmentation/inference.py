"""Lesion segmentation of one MRI: preprocess -> UNETR sliding window -> native geometry -> lesions.

Stages (each timed in :attr:`SegmentationResult.timings_s`):

1. ``preprocess.*``: the model's preprocessing (:mod:`segmentation.preprocess`);
2. ``network``: sliding windows with batched windows, Gaussian blending, sigmoid of the lesion logit.
   On CUDA: MONAI :func:`~monai.inferers.sliding_window_inference` with bf16 autocast (``amp``),
   ``channels_last_3d`` and ``torch.compile`` options, blending on the GPU. On the CPU:
   :func:`segmentation.sliding.sliding_window` (MONAI's windows and weights, windows without head
   skipped), float32, deterministic (same input, same output, bit for bit), through one of three
   backends: PyTorch (the reference), or OpenVINO or ONNX Runtime on the model's verified export
   (:mod:`segmentation.onnx_backend`; OpenVINO is the default on the CPU when the model directory has
   an export);
3. ``to_native``: probability map turned into the compact uint16 type (:mod:`segmentation.probability`)
   and resampled (linear) from the cropped model grid onto the native image grid in one step, then
   thresholded to a uint8 mask (with the model's optional hysteresis: a component is kept only when its
   peak reaches ``detection_threshold``);
4. ``components``: 26-connected lesions, components under ``min_lesion_volume_mm3`` dropped
   (:func:`rano.measure.label_components`);
5. ``fp_reduction`` (only when the model config has ``postprocessing.fp_reduction``): components that
   look like vessels, falx or dura removed, each kept in :attr:`SegmentationResult.rejected` with its
   features and the rule that removed it (:mod:`segmentation.fp_reduction`);
6. ``rim_completion`` (only when the model config has ``postprocessing.rim_completion``): each kept
   component extended to the outer edge of its enhancing rim and the cavity it encloses
   (:mod:`segmentation.rim_completion`; the volume each gained is in
   :attr:`SegmentationResult.rim_added_mm3`);
7. ``small_lesions`` (only when the model config has ``postprocessing.small_lesions``): bright blobs of
   a few millimetres that the network's grid cannot resolve, found on the image away from every
   component the network drew (kept or rejected) and added as new lesions after them
   (:mod:`segmentation.small_lesions`; their features are in :attr:`SegmentationResult.small_lesions`);
8. ``measure``: the lesion table (:func:`rano.measure.measure_lesions`), in native millimetres.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import numpy as np
import SimpleITK as sitk

from rano.measure import LesionMeasurement, label_components, measure_lesions
from rano.settings import ResponseSettings
from segmentation.errors import BackendUnavailableError, ModelConfigError
from segmentation.fp_reduction import RejectedComponent, brain_mask, native_brain, reduce_false_positives
from segmentation.model import (
    BACKENDS,
    EXPORT_BACKENDS,
    LoadedModel,
    PostprocessConfig,
    RimCompletionConfig,
    resolve_device,
    resolve_device_name,
)
from segmentation.preprocess import PreprocessedImage, PreprocessError, preprocess, to_native
from segmentation.probability import quantise
from segmentation.rim_completion import RimCompletionResult, complete_rims
from segmentation.sliding import sliding_window
from segmentation.small_lesions import Candidate, detect_small_lesions

if TYPE_CHECKING:
    # Imported where the PyTorch backend runs: the backends of the export never load torch or MONAI.
    import torch


class ImageTooSmallError(PreprocessError):
    """The head in the image is far smaller than the model's window: it is not a brain MRI volume."""


#: An image is refused when a side of its head box is under this fraction of the window's side.
MIN_WINDOW_FRACTION = 0.25


@dataclass(frozen=True)
class InferenceOptions:
    """How to run the network.

    Attributes:
        device: ``auto`` (CUDA when present, else CPU), ``cpu`` or ``cuda``.
        amp: bf16 autocast on CUDA (ignored on the CPU, which stays float32 and deterministic).
        channels_last: ``channels_last_3d`` memory format on CUDA.
        compile: ``torch.compile`` the network on CUDA.
        sw_batch_size: Windows per forward pass (default: the model config's; 1 on the backends of the
            export).
        overlap: Window overlap fraction (default: the model config's).
        threshold: Probability threshold (default: the model config's).
        keep_probability: Keep the native-grid probability map in the result (uint16, probability x
            65535: 2 bytes/voxel; :func:`segmentation.probability.to_float` reads it).
        backend: ``auto``, ``torch``, ``onnx`` or ``openvino`` (default: the model config's
            ``inference.backend``); see :func:`resolve_backend`.
        threads: CPU threads of the export's runtime (default: the cores this process may use).
        skip_empty_windows: On the CPU, do not run windows that hold no head voxel.
    """

    device: str = "auto"
    amp: bool = True
    channels_last: bool = True
    compile: bool = False
    sw_batch_size: int | None = None
    overlap: float | None = None
    threshold: float | None = None
    keep_probability: bool = False
    backend: str | None = None
    threads: int | None = None
    skip_empty_windows: bool = True


@dataclass(frozen=True)
class SegmentationResult:
    """Output of :func:`segment_image`, all on the native image grid.

    Attributes:
        mask: Binary lesion mask (uint8), small components removed.
        labels: Lesion labels 1..n (uint32), raster order.
        lesions: One measurement per label (rano-bm.md section 1).
        timings_s: Seconds per stage.
        device: Device the network ran on.
        n_windows: Number of sliding windows evaluated.
        probability: Lesion probability when ``keep_probability`` was set, in the compact type (uint16,
            probability x 65535; :mod:`segmentation.probability`).
        backend: The backend that ran the network: ``torch``, ``onnx`` or ``openvino``.
        n_windows_skipped: Windows not run because they held no head voxel.
        rejected: Components removed by the false-positive reduction stage, with features and reason.
        rim_added_mm3: Volume (mm^3) the rim completion stage added to each lesion, by label (empty when
            the stage does not run).
        small_lesions: The lesions the small-lesion stage added, by label, with their features (empty
            when the stage does not run or adds none).
    """

    mask: sitk.Image
    labels: sitk.Image
    lesions: list[LesionMeasurement]
    timings_s: dict[str, float]
    device: str
    n_windows: int
    probability: sitk.Image | None = field(default=None)
    backend: str = "torch"
    n_windows_skipped: int = 0
    rejected: tuple[RejectedComponent, ...] = ()
    rim_added_mm3: dict[int, float] = field(default_factory=dict)
    small_lesions: dict[int, Candidate] = field(default_factory=dict)

    @property
    def runtime(self) -> str:
        """Where and how the network ran, for provenance: ``cpu/openvino``, ``cpu/onnx``, ``cpu/torch``,
        ``cuda/torch``."""
        return f"{self.device}/{self.backend}"


def _count_windows(shape_zyx: tuple[int, ...], roi_zyx: tuple[int, ...], overlap: float) -> int:
    n = 1
    for s, r in zip(shape_zyx, roi_zyx, strict=True):
        s = max(s, r)
        step = max(1, int(r * (1 - overlap)))
        n *= int(np.ceil((s - r) / step)) + 1
    return n


def _predictor(
    network: torch.nn.Module, device: torch.device, options: InferenceOptions
) -> Callable[[torch.Tensor], torch.Tensor]:
    import torch

    use_amp = device.type == "cuda" and options.amp

    def run(x: torch.Tensor) -> torch.Tensor:
        if device.type == "cuda" and options.channels_last:
            x = x.contiguous(memory_format=torch.channels_last_3d)
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=use_amp):
            out = network(x)
        logit = out if out.shape[1] == 1 else out[:, 1:2] - out[:, 0:1]
        # Sigmoid per window: blending probabilities keeps the map in 0..1.
        return torch.sigmoid(logit.float())

    return run


def resolve_backend(requested: str, device: str, model: LoadedModel) -> str:
    """The backend that runs the network: ``torch``, ``onnx`` or ``openvino``.

    ``auto`` is OpenVINO on the CPU when the model has a verified export (ONNX Runtime when OpenVINO is
    not installed), PyTorch otherwise (and always on CUDA). ``onnx`` and ``openvino`` run on the CPU
    only and need the export. ``device`` is a device name (``cpu``, ``cuda``, ``cuda:0``).

    Raises:
        BackendUnavailableError: ``onnx`` or ``openvino`` on CUDA, without an export or without its
            runtime.
        ModelConfigError: An unknown backend name.
    """
    from segmentation.onnx_backend import RUNTIME_PACKAGES, runtime_available

    if requested not in BACKENDS:
        raise ModelConfigError(f"unknown backend {requested!r}; use {', '.join(BACKENDS)}")
    if requested == "torch":
        return "torch"
    if requested in EXPORT_BACKENDS:
        if device != "cpu":
            raise BackendUnavailableError(
                f"the {requested} backend runs on the CPU: use --device cpu, or --backend torch"
            )
        if model.onnx_path is None:
            raise BackendUnavailableError(
                f"the {requested} backend was asked for but {model.directory} has no verified export; "
                f"run bm-export {model.directory} first"
            )
        if not runtime_available(requested):
            raise BackendUnavailableError(
                f"the {requested} backend needs the {RUNTIME_PACKAGES[requested]} package, which is not "
                "installed"
            )
        return requested
    if device == "cpu" and model.onnx_path is not None:
        for backend in EXPORT_BACKENDS:
            if runtime_available(backend):
                return backend
    return "torch"


def _cpu_network(
    pre: PreprocessedImage,
    model: LoadedModel,
    backend: str,
    options: InferenceOptions,
    overlap: float,
    sw_batch: int,
) -> tuple[np.ndarray, int, int]:
    """Probability on the model grid, windows run and windows skipped, on the CPU."""
    cfg = model.config
    roi_zyx = tuple(int(v) for v in cfg.inference.roi_size)[::-1]
    predictor: Callable[[np.ndarray], np.ndarray]
    if backend in EXPORT_BACKENDS:
        from segmentation.onnx_backend import predictor_of

        predictor = predictor_of(model, options.threads, backend)
        # One window per call unless asked: the runtime's threads already fill the cores, and batches
        # of 2 or 4 windows cost the same CPU time per window with 2-3x the memory (bench segmentation).
        sw_batch = options.sw_batch_size or 1
    else:
        import torch

        run = _predictor(model.network.eval(), torch.device("cpu"), options)

        def predictor(x: np.ndarray) -> np.ndarray:
            with torch.inference_mode():
                return run(torch.from_numpy(x)).numpy()

    mask = sitk.GetArrayViewFromImage(pre.head_mask) if options.skip_empty_windows else None
    out = sliding_window(
        pre.array,
        predictor,
        roi_zyx,
        overlap=overlap,
        mode=cfg.inference.mode,
        batch_size=sw_batch,
        head_mask=mask,
    )
    return out.probability, out.n_windows, out.n_skipped


def _cuda_network(
    pre: PreprocessedImage,
    model: LoadedModel,
    device: torch.device,
    options: InferenceOptions,
    overlap: float,
    sw_batch: int,
) -> np.ndarray:
    """Probability on the model grid, on CUDA: MONAI's sliding window with blending on the GPU."""
    import torch
    from monai.inferers import sliding_window_inference

    cfg = model.config
    roi_zyx = tuple(int(v) for v in cfg.inference.roi_size)[::-1]
    network = model.network
    if device.type == "cuda":
        network = network.to(device)
        if options.channels_last:
            network = network.to(memory_format=torch.channels_last_3d)  # type: ignore[call-overload]
        if options.compile:
            network = torch.compile(network)  # type: ignore[assignment]
    network.eval()
    x = torch.from_numpy(np.ascontiguousarray(pre.array, dtype=np.float32))[None, None].to(device)
    with torch.inference_mode():
        prob = sliding_window_inference(
            x,
            roi_size=roi_zyx,
            sw_batch_size=sw_batch,
            predictor=_predictor(network, device, options),
            overlap=overlap,
            mode=cfg.inference.mode,
            sw_device=device,
            device=device,
        )
        assert isinstance(prob, torch.Tensor)  # a tensor predictor gives a tensor back
        prob_np = prob[0, 0].float().cpu().numpy()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return prob_np


def lesion_components(probability: sitk.Image, post: PostprocessConfig, min_volume_mm3: float) -> sitk.Image:
    """The lesion components (labels 1..n, 26-connected) of a native-grid probability map: ``post``'s
    thresholds (:meth:`~segmentation.model.PostprocessConfig.binarise`), then the components of at
    least ``min_volume_mm3``."""
    mask = sitk.GetImageFromArray(post.binarise(sitk.GetArrayViewFromImage(probability)).astype(np.uint8))
    mask.CopyInformation(probability)
    return label_components(mask, min_volume_mm3)


@dataclass(frozen=True)
class _Staged:
    """What the optional component stages did (:func:`_component_stages`)."""

    labels: sitk.Image
    rejected: tuple[RejectedComponent, ...] = ()
    rim_added_mm3: dict[int, float] = field(default_factory=dict)
    small_lesions: dict[int, Candidate] = field(default_factory=dict)


def _added_outside(labels: sitk.Image, drawn: sitk.Image) -> dict[int, float]:
    """Volume (mm^3) of each component of ``labels`` that lies outside every component of ``drawn``
    (every label present)."""
    lab = sitk.GetArrayViewFromImage(labels)
    outside = np.bincount(lab[sitk.GetArrayViewFromImage(drawn) == 0].ravel(), minlength=int(lab.max()) + 1)
    voxel_mm3 = float(np.prod(labels.GetSpacing()))
    return {k: float(outside[k]) * voxel_mm3 for k in range(1, int(lab.max()) + 1)}


def _component_stages(
    image: sitk.Image,
    labels: sitk.Image,
    pre: PreprocessedImage,
    post: PostprocessConfig,
    timings: dict[str, float],
    probability: sitk.Image,
) -> _Staged:
    """The optional stages on the components drawn from ``probability`` (native grid): false-positive
    reduction, rim completion, then small-lesion detection (each timed into ``timings`` when it runs).
    With ``fp_reduction.after_rim_completion`` rim completion runs first and the false-positive stage
    judges the completed components."""
    drawn = labels
    has_components = bool(sitk.GetArrayViewFromImage(labels).any())
    runs_on_components = (post.fp_reduction or post.rim_completion) and has_components
    if not (runs_on_components or post.small_lesions):
        return _Staged(labels)
    # The stages need the brain mask (model grid) and its native-grid copy: each computed once, timed
    # with the first stage that runs.
    t = time.perf_counter()
    brain_model = brain_mask(pre.model_space, pre.head_mask)
    brain = native_brain(brain_model, pre)
    shared = time.perf_counter() - t
    rejected: tuple[RejectedComponent, ...] = ()
    rim_added: dict[int, float] = {}
    fp, rim = post.fp_reduction, post.rim_completion
    rim_first = fp is not None and fp.after_rim_completion

    def complete(components: sitk.Image, config: RimCompletionConfig) -> RimCompletionResult:
        nonlocal shared
        t = time.perf_counter()
        completed = complete_rims(image, components, brain, config)
        timings["rim_completion"] = time.perf_counter() - t + shared
        shared = 0.0
        return completed

    if rim is not None and has_components and rim_first:
        labels = complete(labels, rim).labels
    if fp is not None and has_components:
        t = time.perf_counter()
        reduced = reduce_false_positives(image, labels, pre, fp, brain_model, brain, probability)
        labels, rejected = reduced.labels, reduced.rejected
        timings["fp_reduction"] = time.perf_counter() - t + shared
        shared = 0.0
    if rim_first:
        # What rim completion added to each kept component: its voxels outside every drawn component
        # (the stage only adds where no component is; the false-positive stage relabels what it keeps).
        rim_added = _added_outside(labels, drawn)
    elif rim is not None and has_components:
        completed = complete(labels, rim)
        labels, rim_added = completed.labels, completed.added_mm3
    small: dict[int, Candidate] = {}
    if post.small_lesions is not None:
        t = time.perf_counter()
        # Not looked at: every component the network drew (a rejected vessel stays rejected) and the
        # lesions as rim completion left them.
        exclude = sitk.Or(sitk.Cast(drawn > 0, sitk.sitkUInt8), sitk.Cast(labels > 0, sitk.sitkUInt8))
        found = detect_small_lesions(image, labels, exclude, brain, post.small_lesions, probability)
        first = int(sitk.GetArrayViewFromImage(labels).max()) + 1
        labels = found.labels
        small = {first + i: c for i, c in enumerate(found.added)}
        timings["small_lesions"] = time.perf_counter() - t + shared
    return _Staged(labels, rejected, rim_added, small)


def segment_image(
    image: sitk.Image,
    model: LoadedModel,
    options: InferenceOptions | None = None,
    settings: ResponseSettings | None = None,
) -> SegmentationResult:
    """Segment and measure the metastases of one post-gadolinium T1 volume.

    Args:
        image: The MRI in its native geometry (any orientation, spacing, pixel type).
        model: A verified model (:func:`segmentation.model.load_model`).
        options: Device and speed options.
        settings: Measurement settings; by default the RANO-BM defaults with the model's
            ``min_lesion_volume_mm3``.

    Returns:
        Mask, labels and lesion table on the native grid, with per-stage timings.

    Raises:
        EmptyImageError: The image is constant (e.g. all zeros).
        ImageTooSmallError: The head is far smaller than the model's window.
        PreprocessError: Any other image that cannot be preprocessed.
        DeviceUnavailableError: ``cuda`` asked for without CUDA.
        BackendUnavailableError: ``onnx`` or ``openvino`` asked for on CUDA, without a verified export or
            without its runtime.
    """
    options = options or InferenceOptions()
    cfg = model.config
    settings = settings or ResponseSettings(min_lesion_volume_mm3=cfg.postprocessing.min_lesion_volume_mm3)
    requested = options.backend or cfg.inference.backend
    # The export's runtimes run on the CPU: "auto" device means the CPU for them, never CUDA. On a
    # machine without the NVIDIA driver "auto" is the CPU without asking torch (whose import takes seconds).
    device = resolve_device_name(
        "cpu" if requested in EXPORT_BACKENDS and options.device == "auto" else options.device
    )
    backend = resolve_backend(requested, device, model)
    timings: dict[str, float] = {}

    roi_zyx = tuple(int(v) for v in cfg.inference.roi_size)[::-1]
    window_mm = np.asarray(roi_zyx[::-1], dtype=float) * np.asarray(cfg.preprocessing.spacing_mm)

    def check_extent(extent_mm: np.ndarray, what: str, window: np.ndarray = window_mm) -> None:
        if np.any(extent_mm < MIN_WINDOW_FRACTION * window):
            raise ImageTooSmallError(
                f"The {what} is far too small for this model: {np.round(extent_mm, 1).tolist()} mm against a "
                f"window of {np.round(window, 1).tolist()} mm. Send a whole-brain 3D volume."
            )

    if image.GetDimension() == 3:
        # Sorted extents: the check must not depend on the orientation of the index axes.
        native_extent = np.sort(np.asarray(image.GetSize()) * np.asarray(image.GetSpacing()))
        check_extent(native_extent, "image", np.sort(window_mm))
    pre = preprocess(image, cfg.preprocessing)
    timings.update({f"preprocess.{k}": v for k, v in pre.timings_s.items()})
    shape = pre.array.shape
    check_extent(np.asarray(shape[::-1]) * np.asarray(cfg.preprocessing.spacing_mm), "imaged head")

    t = time.perf_counter()
    overlap = cfg.inference.overlap if options.overlap is None else options.overlap
    sw_batch = cfg.inference.sw_batch_size if options.sw_batch_size is None else options.sw_batch_size
    if device == "cpu":
        prob_np, n_windows, n_skipped = _cpu_network(pre, model, backend, options, overlap, sw_batch)
    else:
        prob_np = _cuda_network(pre, model, resolve_device(device), options, overlap, sw_batch)
        n_windows, n_skipped = _count_windows(shape, roi_zyx, overlap), 0
    timings["network"] = time.perf_counter() - t

    t = time.perf_counter()
    post = (
        cfg.postprocessing
        if options.threshold is None
        else replace(cfg.postprocessing, threshold=options.threshold)
    )
    native_prob = to_native(quantise(prob_np), pre)
    del prob_np
    timings["to_native"] = time.perf_counter() - t

    t = time.perf_counter()
    labels = lesion_components(native_prob, post, settings.min_lesion_volume_mm3)
    timings["components"] = time.perf_counter() - t

    staged = _component_stages(image, labels, pre, post, timings, native_prob)
    labels = staged.labels
    mask = sitk.Cast(labels > 0, sitk.sitkUInt8)

    t = time.perf_counter()
    lesions = measure_lesions(labels, image, settings=settings, relabel=False)
    timings["measure"] = time.perf_counter() - t
    return SegmentationResult(
        mask=mask,
        labels=labels,
        lesions=lesions,
        timings_s=timings,
        device=str(device),
        n_windows=n_windows,
        probability=native_prob if options.keep_probability else None,
        backend=backend,
        n_windows_skipped=n_skipped,
        rejected=staged.rejected,
        rim_added_mm3=staged.rim_added_mm3,
        small_lesions=staged.small_lesions,
    )
