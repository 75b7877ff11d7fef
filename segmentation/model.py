"""The segmentation model: a MONAI UNETR built from a config file, loaded from a model directory.

A model directory holds exactly what is needed to run and audit a model:

* ``config.json``: ``architecture`` (UNETR arguments), ``preprocessing`` (see
  :class:`segmentation.preprocess.PreprocessConfig`), ``inference`` (window, overlap, batch),
  ``postprocessing`` (threshold, smallest lesion), ``intended_use``, ``label``, ``versions``,
  ``training`` (provenance), ``metrics`` and ``weights_sha256``;
* ``weights.pt``: the ``state_dict`` (``torch.save``), whose sha256 must equal ``weights_sha256``;
* optionally ``model.onnx``: the network exported for the CPU backend (``bm-export``), recorded in
  ``config.json`` -> ``onnx_export`` with its own sha256 and the sha256 of the weights it was made from
  (see :class:`OnnxExport` and :mod:`segmentation.onnx_backend`).

:func:`load_model` verifies the checksum before unpickling anything and refuses, clearly, a checksum
mismatch, weights whose tensor shapes do not fit the architecture, or a config that is incomplete. When
the ONNX backend may run, it also verifies the export: its checksum, and that it was made from the
current weights (a stale export is refused, never silently used).
"""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Self

import numpy as np
from scipy import ndimage as ndi

from segmentation.errors import (
    BackendUnavailableError,
    ModelConfigError,
    ModelIntegrityError,
    ModelWeightsMismatchError,
    StaleExportError,
)
from segmentation.io import sha256_file
from segmentation.modeldir import (
    CONFIG_NAME,
    DEMO_MODEL_DIR,
    WEIGHTS_NAME,
    algorithm_version,
    provenance,
)
from segmentation.preprocess import PreprocessConfig
from segmentation.probability import is_compact, level

if TYPE_CHECKING:
    # torch and MONAI are imported where a network is built or run, not with this module: the ONNX
    # backend runs a model without them (their import takes seconds, a large part of a CPU run).
    import torch
    from monai.networks.nets import UNETR

_ARCH_KEYS = {
    "in_channels",
    "out_channels",
    "img_size",
    "feature_size",
    "hidden_size",
    "mlp_dim",
    "num_heads",
    "proj_type",
    "norm_name",
    "conv_block",
    "res_block",
    "dropout_rate",
    "qkv_bias",
}


class DeviceUnavailableError(ValueError):
    """The requested compute device is not available on this machine."""


@dataclass(frozen=True)
class InferenceConfig:
    """Sliding-window settings (``config.json`` -> ``inference``).

    Attributes:
        roi_size: Window size (x, y, z voxels); equals the UNETR ``img_size``.
        sw_batch_size: Windows per forward pass.
        overlap: Fraction of overlap between neighbouring windows.
        mode: Blending, ``gaussian`` or ``constant``.
        backend: ``auto`` (OpenVINO on the CPU when the directory holds a verified export, ONNX Runtime
            there when OpenVINO is not installed, PyTorch otherwise and on CUDA), ``torch``, ``onnx``
            (ONNX Runtime on the export) or ``openvino`` (OpenVINO on the export).
    """

    roi_size: tuple[int, int, int]
    sw_batch_size: int = 4
    overlap: float = 0.25
    mode: str = "gaussian"
    backend: str = "auto"

    def __post_init__(self) -> None:
        # Checked here so a bad config.json fails at load time with its field named, not mid-inference.
        if (
            not isinstance(self.sw_batch_size, int)
            or isinstance(self.sw_batch_size, bool)
            or self.sw_batch_size < 1
        ):
            raise ModelConfigError(
                f"inference.sw_batch_size must be a whole number >= 1, got {self.sw_batch_size!r}"
            )
        if not isinstance(self.overlap, int | float) or not 0.0 <= float(self.overlap) < 1.0:
            raise ModelConfigError(f"inference.overlap must be a number in [0, 1), got {self.overlap!r}")
        if self.mode not in ("gaussian", "constant"):
            raise ModelConfigError(f"inference.mode must be 'gaussian' or 'constant', got {self.mode!r}")
        if self.backend not in BACKENDS:
            raise ModelConfigError(
                f"inference.backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}"
            )


#: Inference backends: ``auto`` picks a runtime of the export on the CPU when the model has one.
BACKENDS = ("auto", "torch", "onnx", "openvino")
#: The backends that run the model's ONNX export (on the CPU), in the order ``auto`` prefers them.
EXPORT_BACKENDS = ("openvino", "onnx")


@dataclass(frozen=True)
class OnnxExport:
    """The record of a model's ONNX export (``config.json`` -> ``onnx_export``), written by ``bm-export``.

    Attributes:
        file: File name inside the model directory (``model.onnx``).
        sha256: Checksum of that file.
        weights_sha256: Checksum of the ``weights.pt`` it was exported from; differs from the config's
            ``weights_sha256`` when the weights changed after the export (stale: refused).
        opset: ONNX opset version.
        max_abs_diff: Largest absolute difference of the lesion probability between the export and
            PyTorch, measured by ``bm-export`` on a random window (the largest over the runtimes it
            checked; ``extra["max_abs_diff_by_runtime"]`` has each).
        extra: Everything else (library versions, date), kept verbatim.
    """

    file: str
    sha256: str
    weights_sha256: str
    opset: int
    max_abs_diff: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> OnnxExport:
        """Parse the ``onnx_export`` section."""
        missing = [k for k in ("file", "sha256", "weights_sha256", "opset") if k not in data]
        if missing:
            raise ModelConfigError(f"onnx_export lacks {', '.join(missing)}")
        if Path(str(data["file"])).name != str(data["file"]):
            raise ModelConfigError(
                f"onnx_export.file must be a file name in the model directory, got {data['file']!r}"
            )
        known = {"file", "sha256", "weights_sha256", "opset", "max_abs_diff"}
        diff = data.get("max_abs_diff")
        return cls(
            file=str(data["file"]),
            sha256=str(data["sha256"]),
            weights_sha256=str(data["weights_sha256"]),
            opset=int(data["opset"]),
            max_abs_diff=None if diff is None else float(diff),
            extra={k: v for k, v in data.items() if k not in known},
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready mapping, the inverse of :meth:`from_dict`."""
        out: dict[str, Any] = {
            "file": self.file,
            "sha256": self.sha256,
            "weights_sha256": self.weights_sha256,
            "opset": self.opset,
        }
        if self.max_abs_diff is not None:
            out["max_abs_diff"] = self.max_abs_diff
        return {**out, **self.extra}


#: Rules of :class:`FpReductionConfig`, in the order they are checked (the first that fires is the reason).
FP_RULES = (
    "outside_brain", "tubularity", "elongation", "midline", "surface", "shell_contrast", "brain_contrast", "classifier",
)  # fmt: skip

#: The inputs a :class:`FpClassifierConfig` may use: transforms of the component features that
#: :func:`segmentation.fp_reduction.classifier_inputs` computes (logarithms of ratios and sizes, distances
#: capped where a larger value means nothing more).
FP_CLASSIFIER_INPUTS = (
    "log_volume", "log_elongation", "tubularity", "midline_distance", "log_midline_width", "depth",
    "log_shell_contrast", "log_brain_contrast", "probability_logit",
)  # fmt: skip

#: The inputs a :class:`SmallLesionClassifierConfig` may use: transforms of a small-lesion candidate's
#: features that :func:`segmentation.small_lesions.classifier_inputs` computes.
SMALL_LESION_INPUTS = (
    "log_response", "blobness", "log_brightness", "log_contrast", "depth", "probability_logit", "sigma",
    "log_diameter",
)  # fmt: skip


def _check_number(
    section: str, name: str, value: Any, *, low: float, positive: bool = False, high: float | None = None
) -> None:
    """Refuse a value that is not a number >= ``low`` (or > ``low`` when ``positive``) and, when
    ``high`` is given, <= ``high``, naming the field."""
    ok = not isinstance(value, bool) and isinstance(value, int | float) and np.isfinite(float(value))
    ok = ok and (float(value) > low if positive else float(value) >= low)
    ok = ok and (high is None or float(value) <= high)
    if not ok:
        relation = ">" if positive else ">="
        bound = "" if high is None else f" and <= {high:g}"
        raise ModelConfigError(f"{section}.{name} must be a number {relation} {low:g}{bound}, got {value!r}")


def _check_scales(section: str, scales: Any) -> None:
    """Refuse ``sigmas_mm`` unless it is a non-empty tuple of positive numbers (mm)."""
    if not isinstance(scales, tuple) or not scales:
        raise ModelConfigError(f"{section}.sigmas_mm must be a list of scales in mm, got {scales!r}")
    for value in scales:
        _check_number(section, "sigmas_mm", value, low=0.0, positive=True)


def _scales_as_tuple(values: dict[str, Any]) -> dict[str, Any]:
    """``values`` with a JSON list of ``sigmas_mm`` turned into the tuple the config holds."""
    if isinstance(values.get("sigmas_mm"), list | tuple):
        values["sigmas_mm"] = tuple(values["sigmas_mm"])
    return values


def _section_values(section: str, data: Any, fields: Iterable[str]) -> dict[str, Any]:
    """The values of a config section that must be a mapping of known fields (refused otherwise, named)."""
    if not isinstance(data, Mapping):
        raise ModelConfigError(f"{section} must be a mapping, got {data!r}")
    unknown = set(data) - set(fields)
    if unknown:
        raise ModelConfigError(f"{section} has unknown keys: {sorted(unknown)}")
    return dict(data)


def _stage_values(
    section: str, data: Any, stage: Any, classifier: type[LesionClassifierConfig]
) -> dict[str, Any]:
    """The values of a post-processing stage's mapping: known fields only, ``sigmas_mm`` as a tuple, its
    ``classifier`` (when given) parsed as ``classifier``."""
    values = _scales_as_tuple(_section_values(section, data, stage.__dataclass_fields__))
    if values.get("classifier") is not None:
        values["classifier"] = classifier.from_dict(values["classifier"])
    return values


def _stage_dict(stage: Any, *, keep_none: bool) -> dict[str, Any]:
    """A post-processing stage's JSON-ready mapping: tuples as lists, its classifier as its own mapping,
    no ``classifier`` when there is none and, unless ``keep_none``, no other field that is None or
    false (a rule or an option that is off)."""
    out: dict[str, Any] = {}
    for name in stage.__dataclass_fields__:
        value = getattr(stage, name)
        if isinstance(value, LesionClassifierConfig):
            out[name] = value.to_dict()
        elif (value is not None and value is not False) or (keep_none and name != "classifier"):
            out[name] = list(value) if isinstance(value, tuple) else value
    return out


@dataclass(frozen=True)
class LesionClassifierConfig:
    """A logistic regression that weighs a lesion candidate's named inputs into a lesion probability.

    ``p = 1 / (1 + exp(-(bias + sum(weights * (x - mean) / scale))))`` over the inputs named in
    ``inputs`` (each a member of the subclass's :attr:`INPUTS`); a candidate whose ``p`` is below
    ``min_probability`` is rejected (rule ``classifier``). Fitted on phantoms by
    :func:`segmentation.fp_classifier.fit_linear`; ``fitted_on`` says on what, for the model card. The
    subclasses say where in ``config.json`` it lives and which inputs it may use.
    """

    #: Where the mapping lives in ``config.json`` (named in errors).
    SECTION: ClassVar[str] = "postprocessing.classifier"
    #: The input names it may use.
    INPUTS: ClassVar[tuple[str, ...]] = ()

    inputs: tuple[str, ...]
    mean: tuple[float, ...]
    scale: tuple[float, ...]
    weights: tuple[float, ...]
    bias: float
    min_probability: float
    fitted_on: str = ""

    def __post_init__(self) -> None:
        section = self.SECTION
        if not isinstance(self.inputs, tuple) or not self.inputs:
            raise ModelConfigError(f"{section}.inputs must be a list of input names, got {self.inputs!r}")
        unknown = [name for name in self.inputs if name not in self.INPUTS]
        if unknown or len(set(self.inputs)) != len(self.inputs):
            raise ModelConfigError(
                f"{section}.inputs must name distinct inputs of {list(self.INPUTS)}, got {list(self.inputs)}"
            )
        for name in ("mean", "scale", "weights"):
            values = getattr(self, name)
            if not isinstance(values, tuple) or len(values) != len(self.inputs):
                raise ModelConfigError(
                    f"{section}.{name} must have one number per input ({len(self.inputs)})"
                )
            for value in values:
                _check_number(section, name, value, low=-np.inf)
        for value in self.scale:
            _check_number(section, "scale", value, low=0.0, positive=True)
        _check_number(section, "bias", self.bias, low=-np.inf)
        _check_number(section, "min_probability", self.min_probability, low=0.0)
        if self.min_probability >= 1.0:
            raise ModelConfigError(f"{section}.min_probability must be below 1, got {self.min_probability!r}")
        if not isinstance(self.fitted_on, str):
            raise ModelConfigError(f"{section}.fitted_on must be text, got {self.fitted_on!r}")

    def probability(self, values: Mapping[str, float]) -> float:
        """The lesion probability of a candidate whose inputs are ``values`` (every name in ``inputs``).

        Raises:
            ValueError: An input it uses is missing or not finite, named.
        """
        x = np.asarray([values.get(name, np.nan) for name in self.inputs], dtype=np.float64)
        if not np.isfinite(x).all():
            missing = [name for name, v in zip(self.inputs, x, strict=True) if not np.isfinite(v)]
            raise ValueError(f"the classifier needs {missing}")
        z = self.bias + float(
            np.dot(np.asarray(self.weights), (x - np.asarray(self.mean)) / np.asarray(self.scale))
        )
        return float(1.0 / (1.0 + np.exp(-np.clip(z, -50.0, 50.0))))

    @classmethod
    def from_dict(cls, data: Any) -> Self:
        """Parse the mapping (unknown or missing keys are refused, with their names)."""
        values = _section_values(cls.SECTION, data, [f.name for f in fields(cls)])
        missing = [
            n for n in ("inputs", "mean", "scale", "weights", "bias", "min_probability") if n not in values
        ]
        if missing:
            raise ModelConfigError(f"{cls.SECTION} lacks {missing}")
        for name in ("inputs", "mean", "scale", "weights"):
            if isinstance(values[name], list):
                values[name] = tuple(values[name])
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready mapping, the inverse of :meth:`from_dict`."""
        return {
            f.name: list(value) if isinstance(value := getattr(self, f.name), tuple) else value
            for f in fields(self)
        }


@dataclass(frozen=True)
class FpClassifierConfig(LesionClassifierConfig):
    """The second-stage classifier of the false-positive stage (``fp_reduction.classifier``), on the
    :data:`FP_CLASSIFIER_INPUTS` of a network component."""

    SECTION: ClassVar[str] = "postprocessing.fp_reduction.classifier"
    INPUTS: ClassVar[tuple[str, ...]] = FP_CLASSIFIER_INPUTS


@dataclass(frozen=True)
class SmallLesionClassifierConfig(LesionClassifierConfig):
    """The classifier of the small-lesion stage (``small_lesions.classifier``), on the
    :data:`SMALL_LESION_INPUTS` of a candidate whose mask is drawn."""

    SECTION: ClassVar[str] = "postprocessing.small_lesions.classifier"
    INPUTS: ClassVar[tuple[str, ...]] = SMALL_LESION_INPUTS


@dataclass(frozen=True)
class FpReductionConfig:
    """False-positive reduction rules (``config.json`` -> ``postprocessing.fp_reduction``).

    Absent from the config: the stage does not run. Each rule is off when its threshold is None; a
    component is rejected by the first rule (order of :data:`FP_RULES`) whose test holds, and never when
    its volume reaches ``keep_volume_mm3``. Features: :mod:`segmentation.fp_reduction`.

    Attributes:
        min_brain_fraction: ``outside_brain``: reject when less than this share (0-1) of the component's
            voxels lies in the brain mask (orbital fat, scalp fat, nasal mucosa and marrow on an image
            whose skull was not stripped: a brain metastasis is inside the brain).
        max_tubularity: ``tubularity``: reject when the component's tubularity (0-1) exceeds this.
        max_elongation: ``elongation``: reject when the ratio of its largest to smallest extent exceeds this.
        midline_distance_mm: ``midline``: reject when its centroid lies within this distance of the
            midsagittal plane...
        midline_max_width_mm: ...and (when set) its width across the plane is at most this (a falx is thin).
        min_depth_mm: ``surface``: reject when its deepest voxel lies less than this below the brain surface
            (a component hugging the dura or a cortical vein).
        min_shell_contrast: ``shell_contrast``: reject when its mean intensity over that of a surrounding
            shell is below this.
        min_brain_contrast: ``brain_contrast``: reject when its mean intensity over the brain's median is
            below this.
        classifier: ``classifier``: reject when the second-stage classifier's lesion probability is below
            its ``min_probability`` (:class:`FpClassifierConfig`).
        keep_volume_mm3: Components at least this large are always kept (None: no protection).
        split_radius_mm: Before the rules, split each component joined by bridges thinner than twice this
            radius into pieces, each judged on its own; the kept pieces of a component stay one lesion
            (:func:`segmentation.fp_reduction.split_joined`; None: no splitting).
        split_min_piece_mm3: A thin part smaller than this is not a piece of its own.
        sigmas_mm: Gaussian scales (mm) of the tubularity measure: vessel radii (a 3 mm scale already
            answers inside a 5 mm radius ball as if it were a tube).
        shell_mm: Thickness (mm) of the shell of the shell contrast.
        after_rim_completion: Judge each component as rim completion extended it (that stage runs
            first; it must be configured): a cystic lesion the network drew as its dark cavity is then
            described with its enhancing wall. A classifier must be fitted on features of the same kind
            (``python -m bench fp_classifier`` fits both).
    """

    min_brain_fraction: float | None = None
    max_tubularity: float | None = None
    max_elongation: float | None = None
    midline_distance_mm: float | None = None
    midline_max_width_mm: float | None = None
    min_depth_mm: float | None = None
    min_shell_contrast: float | None = None
    min_brain_contrast: float | None = None
    classifier: FpClassifierConfig | None = None
    keep_volume_mm3: float | None = None
    split_radius_mm: float | None = None
    split_min_piece_mm3: float = 50.0
    sigmas_mm: tuple[float, ...] = (1.0, 2.0)
    shell_mm: float = 3.0
    after_rim_completion: bool = False

    def __post_init__(self) -> None:
        section = "postprocessing.fp_reduction"
        if self.classifier is not None and not isinstance(self.classifier, FpClassifierConfig):
            raise ModelConfigError(f"{section}.classifier must be a mapping, got {self.classifier!r}")
        for name in ("min_brain_fraction", "max_tubularity"):
            value = getattr(self, name)
            if value is not None:
                _check_number(section, name, value, low=0.0, high=1.0)
        if self.max_elongation is not None:
            _check_number(section, "max_elongation", self.max_elongation, low=1.0)
        for name in (
            "midline_distance_mm", "midline_max_width_mm", "min_depth_mm", "keep_volume_mm3", "split_radius_mm",
        ):  # fmt: skip
            value = getattr(self, name)
            if value is not None:
                _check_number(section, name, value, low=0.0, positive=True)
        for name in ("min_shell_contrast", "min_brain_contrast"):
            value = getattr(self, name)
            if value is not None:
                _check_number(section, name, value, low=0.0)
        if self.midline_max_width_mm is not None and self.midline_distance_mm is None:
            raise ModelConfigError(f"{section}.midline_max_width_mm needs midline_distance_mm")
        _check_scales(section, self.sigmas_mm)
        _check_number(section, "shell_mm", self.shell_mm, low=0.0, positive=True)
        _check_number(section, "split_min_piece_mm3", self.split_min_piece_mm3, low=0.0)
        if not isinstance(self.after_rim_completion, bool):
            raise ModelConfigError(
                f"{section}.after_rim_completion must be true or false, got {self.after_rim_completion!r}"
            )

    @classmethod
    def from_dict(cls, data: Any) -> FpReductionConfig:
        """Parse the ``fp_reduction`` mapping (unknown keys are refused, with their names)."""
        return cls(**_stage_values("postprocessing.fp_reduction", data, cls, FpClassifierConfig))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready mapping, the inverse of :meth:`from_dict` (rules that are off are left out)."""
        return _stage_dict(self, keep_none=False)


@dataclass(frozen=True)
class RimCompletionConfig:
    """Rim completion (``config.json`` -> ``postprocessing.rim_completion``; absent: the stage does not run).

    Each component is extended to the outer edge of the enhancing rim around it and the cavity that rim
    encloses (:mod:`segmentation.rim_completion`).

    Attributes:
        rim_mm: How far from the component (or its cavity) the enhancing wall is looked for (mm): the
            thickest wall the stage adds.
        min_enhancement: A voxel enhances when brighter than this times the local brain reference.
        reference_mm: The local reference is the median of the brain within this distance (mm) of the
            component's box, the component excluded.
        max_cavity_intensity: A component whose median is darker than this times the reference is a
            cavity: the dark voxels connected to it (same level, within ``cavity_mm``) join it before its
            wall is looked for (None: no cavity step).
        cavity_mm: How far from the component (mm) the cavity's fluid is followed.
    """

    rim_mm: float = 6.0
    min_enhancement: float = 1.5
    reference_mm: float = 20.0
    max_cavity_intensity: float | None = 0.6
    cavity_mm: float = 10.0

    def __post_init__(self) -> None:
        section = "postprocessing.rim_completion"
        _check_number(section, "rim_mm", self.rim_mm, low=0.0, positive=True)
        _check_number(section, "cavity_mm", self.cavity_mm, low=0.0, positive=True)
        _check_number(section, "min_enhancement", self.min_enhancement, low=1.0, positive=True)
        _check_number(section, "reference_mm", self.reference_mm, low=0.0, positive=True)
        if self.max_cavity_intensity is not None:
            _check_number(section, "max_cavity_intensity", self.max_cavity_intensity, low=0.0, positive=True)

    @classmethod
    def from_dict(cls, data: Any) -> RimCompletionConfig:
        """Parse the ``rim_completion`` mapping (unknown keys are refused, with their names)."""
        return cls(**_section_values("postprocessing.rim_completion", data, cls.__dataclass_fields__))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready mapping, the inverse of :meth:`from_dict`."""
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


@dataclass(frozen=True)
class SmallLesionConfig:
    """Small-lesion detection (``config.json`` -> ``postprocessing.small_lesions``; absent: the stage does
    not run). Bright blobs the network's grid cannot resolve, found on the image at a finer grid
    (:mod:`segmentation.small_lesions`, where each feature is defined).

    Attributes:
        spacing_mm: The isotropic grid the image is resampled onto.
        sigmas_mm: The blob scales (a sphere of radius r answers most at sigma = r / sqrt(3)).
        min_response: Smallest scale-normalised blob response of a candidate (x brain median).
        exclude_mm: Candidates within this distance of the network's components are not looked at.
        min_blobness: Smallest blobness kept (0-1; tubes and sheets are near 0).
        min_brightness: Smallest peak intensity kept (x the brain's median).
        min_contrast: Smallest ratio of the peak to the upper quartile of its shell kept.
        min_depth_mm: Smallest depth below the brain surface kept.
        min_probability: Smallest network probability near the peak kept (None: not used).
        min_diameter_mm: Smallest mask kept (equivalent-sphere diameter).
        max_diameter_mm: A mask reaching farther than half this from the peak is refused (a larger
            bright structure).
        classifier: A candidate that passed the rules and whose mask is drawn is kept only when this
            classifier's lesion probability reaches its ``min_probability`` (rule ``classifier``;
            :class:`SmallLesionClassifierConfig`; None: the rules alone decide).
    """

    spacing_mm: float = 1.0
    sigmas_mm: tuple[float, ...] = (1.0, 1.5, 2.0)
    min_response: float = 0.1
    exclude_mm: float = 2.0
    min_blobness: float = 0.3
    min_brightness: float = 1.5
    min_contrast: float = 1.3
    min_depth_mm: float = 2.0
    min_probability: float | None = None
    min_diameter_mm: float = 2.5
    max_diameter_mm: float = 7.0
    classifier: SmallLesionClassifierConfig | None = None

    def __post_init__(self) -> None:
        section = "postprocessing.small_lesions"
        if self.classifier is not None and not isinstance(self.classifier, SmallLesionClassifierConfig):
            raise ModelConfigError(f"{section}.classifier must be a mapping, got {self.classifier!r}")
        _check_scales(section, self.sigmas_mm)
        for name in ("spacing_mm", "max_diameter_mm"):
            _check_number(section, name, getattr(self, name), low=0.0, positive=True)
        for name in (
            "min_response",
            "exclude_mm",
            "min_brightness",
            "min_contrast",
            "min_depth_mm",
            "min_diameter_mm",
        ):
            _check_number(section, name, getattr(self, name), low=0.0)
        _check_number(section, "min_blobness", self.min_blobness, low=0.0, high=1.0)
        if self.min_probability is not None:
            _check_number(section, "min_probability", self.min_probability, low=0.0, high=1.0)

    @classmethod
    def from_dict(cls, data: Any) -> SmallLesionConfig:
        """Parse the ``small_lesions`` mapping (unknown keys are refused, with their names)."""
        return cls(**_stage_values("postprocessing.small_lesions", data, cls, SmallLesionClassifierConfig))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready mapping, the inverse of :meth:`from_dict` (no ``classifier`` when there is none)."""
        return _stage_dict(self, keep_none=True)


@dataclass(frozen=True)
class PostprocessConfig:
    """Thresholding and component filtering (``config.json`` -> ``postprocessing``).

    Attributes:
        threshold: Lesion probability threshold: the extent of each lesion.
        min_lesion_volume_mm3: Components smaller than this are dropped (RANO-BM default 5 mm^3).
        detection_threshold: Hysteresis: a component of ``probability >= threshold`` is kept only when its
            peak probability reaches this (None: every component is kept). Detection and delineation
            then have their own thresholds: a faint enhancing vessel never peaks high, while a large
            lesion keeps its full extent at the lower threshold.
        fp_reduction: The false-positive reduction rules (None, the default: the stage does not run).
        rim_completion: Extension of each kept component to its enhancing rim (None, the default: the
            stage does not run).
        small_lesions: Detection of small lesions on the image, away from the network's components
            (None, the default: the stage does not run).
    """

    threshold: float = 0.5
    min_lesion_volume_mm3: float = 5.0
    detection_threshold: float | None = None
    fp_reduction: FpReductionConfig | None = None
    rim_completion: RimCompletionConfig | None = None
    small_lesions: SmallLesionConfig | None = None

    def __post_init__(self) -> None:
        for name in ("threshold", "detection_threshold"):
            value = getattr(self, name)
            if value is None and name == "detection_threshold":
                continue
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 < float(value) < 1.0:
                raise ModelConfigError(
                    f"postprocessing.{name} must be a probability in (0, 1), got {value!r}"
                )
        value = self.min_lesion_volume_mm3
        if isinstance(value, bool) or not isinstance(value, int | float) or float(value) < 0:
            raise ModelConfigError(
                f"postprocessing.min_lesion_volume_mm3 must be a number >= 0, got {value!r}"
            )
        if (
            self.fp_reduction is not None
            and self.fp_reduction.after_rim_completion
            and self.rim_completion is None
        ):
            raise ModelConfigError(
                "postprocessing.fp_reduction.after_rim_completion needs a postprocessing.rim_completion section"
            )

    def binarise(self, probability: np.ndarray) -> np.ndarray:
        """The lesion mask (bool) of a probability array, before the smallest components are dropped.

        ``probability`` is float (0..1) or the compact stored type (uint16, :mod:`segmentation.probability`),
        whose thresholds are the stored levels ``ceil(t x 65535)``.

        Hysteresis thresholding written with scipy.ndimage (scikit-image's ``apply_hysteresis_threshold``
        does the same, but it is not a dependency): label the components above ``threshold`` once, keep
        those that hold a voxel reaching ``detection_threshold`` (their maximum reaches it). Marking the
        labels under those seed voxels is one pass; ``ndimage.maximum`` per label took seconds on a
        whole-brain grid.
        """
        threshold: float = self.threshold
        detection = self.detection_threshold
        if is_compact(probability):  # stored values: compare with the thresholds' levels
            threshold = level(threshold)
            detection = None if detection is None else level(detection)
        mask = probability >= threshold
        if detection is None or detection <= threshold:
            return mask
        labels, n = ndi.label(mask, np.ones((3, 3, 3), dtype=bool))
        if n == 0:
            return mask
        keep = np.zeros(n + 1, dtype=bool)
        keep[labels[probability >= detection]] = True
        keep[0] = False
        return keep[labels]


@dataclass(frozen=True)
class ModelConfig:
    """The parsed ``config.json`` of a model directory.

    Attributes:
        name: Model name (e.g. ``demo-unetr``).
        version: Model version string.
        label: Label shown wherever the model appears (the demo says "demo — not for clinical use").
        architecture: UNETR keyword arguments.
        preprocessing: Preprocessing parameters.
        inference: Sliding-window parameters.
        postprocessing: Threshold and smallest lesion.
        intended_use: Free text.
        weights_sha256: Checksum of ``weights.pt``.
        onnx_export: The record of ``model.onnx`` when the model has been exported (``bm-export``).
        extra: Everything else (versions, training provenance, metrics), kept verbatim.
    """

    name: str
    version: str
    label: str
    architecture: dict[str, Any]
    preprocessing: PreprocessConfig
    inference: InferenceConfig
    postprocessing: PostprocessConfig
    intended_use: str = ""
    weights_sha256: str = ""
    onnx_export: OnnxExport | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def out_channels(self) -> int:
        """1: sigmoid lesion logit; 2: softmax background/lesion."""
        return int(self.architecture["out_channels"])

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelConfig:
        """Parse and validate a config mapping.

        Raises:
            ModelConfigError: On missing sections or keys, unknown architecture keys, or a window size
                that UNETR cannot take (each side a multiple of its 16-voxel patch).
        """
        for key in ("name", "architecture", "preprocessing", "inference"):
            if key not in data:
                raise ModelConfigError(f"config.json lacks the {key!r} section")
        arch = dict(data["architecture"])
        if arch.pop("name", "UNETR") != "UNETR":
            raise ModelConfigError("only the UNETR architecture is supported")
        unknown = set(arch) - _ARCH_KEYS
        if unknown:
            raise ModelConfigError(f"unknown architecture keys: {sorted(unknown)}")
        for key in ("in_channels", "out_channels", "img_size"):
            if key not in arch:
                raise ModelConfigError(f"architecture lacks {key!r}")
        arch["img_size"] = [int(v) for v in arch["img_size"]]
        if len(arch["img_size"]) != 3 or any(v <= 0 or v % 16 for v in arch["img_size"]):
            raise ModelConfigError(
                f"img_size must be three multiples of 16 (UNETR patch), got {arch['img_size']}"
            )
        if int(arch["out_channels"]) not in (1, 2):
            raise ModelConfigError("out_channels must be 1 (sigmoid) or 2 (softmax)")
        try:
            pre = PreprocessConfig.from_dict(data["preprocessing"])
        except (TypeError, ValueError) as exc:
            raise ModelConfigError(f"preprocessing section: {exc}") from exc
        inf: dict[str, Any] = dict(data["inference"])
        inf["roi_size"] = tuple(int(v) for v in (inf.get("roi_size") or arch["img_size"]))
        if list(inf["roi_size"]) != arch["img_size"]:
            raise ModelConfigError(
                f"inference roi_size {inf['roi_size']} differs from img_size {arch['img_size']}"
            )
        try:
            inference = InferenceConfig(**inf)
            post_data = dict(data.get("postprocessing", {}))
            fp_data = post_data.pop("fp_reduction", None)
            fp = None if fp_data is None else FpReductionConfig.from_dict(fp_data)
            rim_data = post_data.pop("rim_completion", None)
            rim = None if rim_data is None else RimCompletionConfig.from_dict(rim_data)
            small_data = post_data.pop("small_lesions", None)
            small = None if small_data is None else SmallLesionConfig.from_dict(small_data)
            post = PostprocessConfig(**post_data, fp_reduction=fp, rim_completion=rim, small_lesions=small)
        except TypeError as exc:
            raise ModelConfigError(f"inference/postprocessing section: {exc}") from exc
        known = {
            "name", "version", "label", "architecture", "preprocessing", "inference",
            "postprocessing", "intended_use", "weights_sha256", "onnx_export",
        }  # fmt: skip
        export = data.get("onnx_export")
        return cls(
            name=str(data["name"]),
            version=str(data.get("version", "0")),
            label=str(data.get("label", "")),
            architecture={"name": "UNETR", **arch},
            preprocessing=pre,
            inference=inference,
            postprocessing=post,
            intended_use=str(data.get("intended_use", "")),
            weights_sha256=str(data.get("weights_sha256", "")),
            onnx_export=OnnxExport.from_dict(export) if export else None,
            extra={k: v for k, v in data.items() if k not in known},
        )

    def algorithm_version(self) -> str:
        """Version and short weights checksum, for DICOM Algorithm Version (LO, 64 characters)."""
        return algorithm_version(self.version, self.weights_sha256)

    def provenance(self) -> str:
        """One line naming what produced a result: name, version, full weights checksum, label."""
        return provenance(self.name, self.version, self.weights_sha256, self.label)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready mapping, the inverse of :meth:`from_dict`."""
        return {
            "name": self.name,
            "version": self.version,
            "label": self.label,
            "intended_use": self.intended_use,
            "architecture": dict(self.architecture),
            "preprocessing": self.preprocessing.to_dict(),
            "inference": {
                "roi_size": list(self.inference.roi_size),
                "sw_batch_size": self.inference.sw_batch_size,
                "overlap": self.inference.overlap,
                "mode": self.inference.mode,
                **({"backend": self.inference.backend} if self.inference.backend != "auto" else {}),
            },
            "postprocessing": {
                "threshold": self.postprocessing.threshold,
                "min_lesion_volume_mm3": self.postprocessing.min_lesion_volume_mm3,
                **(
                    {"detection_threshold": self.postprocessing.detection_threshold}
                    if self.postprocessing.detection_threshold is not None
                    else {}
                ),
                **(
                    {"fp_reduction": self.postprocessing.fp_reduction.to_dict()}
                    if self.postprocessing.fp_reduction is not None
                    else {}
                ),
                **(
                    {"rim_completion": self.postprocessing.rim_completion.to_dict()}
                    if self.postprocessing.rim_completion is not None
                    else {}
                ),
                **(
                    {"small_lesions": self.postprocessing.small_lesions.to_dict()}
                    if self.postprocessing.small_lesions is not None
                    else {}
                ),
            },
            "weights_sha256": self.weights_sha256,
            **({"onnx_export": self.onnx_export.to_dict()} if self.onnx_export is not None else {}),
            **self.extra,
        }


def cuda_possible() -> bool:
    """False when this machine certainly has no CUDA device (Linux without the NVIDIA driver), so that
    ``auto`` can choose the CPU without importing torch; True when only torch can tell."""
    if os.name != "posix" or not Path("/proc").is_dir():
        return True
    return (
        Path("/proc/driver/nvidia").exists() or any(Path("/dev").glob("nvidia*")) or Path("/dev/dxg").exists()
    )


def resolve_device_name(name: str) -> str:
    """:func:`resolve_device` as a name (``cpu`` or ``cuda``), importing torch only when CUDA may exist.

    Raises:
        DeviceUnavailableError: ``cuda`` without CUDA on this machine, or an unknown name.
    """
    if name == "cpu" or (name == "auto" and not cuda_possible()):
        return "cpu"
    return resolve_device(name).type


def resolve_device(name: str) -> torch.device:
    """The compute device of inference and training: ``auto`` (CUDA when present, else CPU), ``cpu`` or
    ``cuda``.

    Raises:
        DeviceUnavailableError: ``cuda`` without CUDA on this machine, or an unknown name.
    """
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name not in ("cpu", "cuda"):
        raise DeviceUnavailableError(f"unknown device {name!r}; use auto, cpu or cuda")
    if name == "cuda" and not torch.cuda.is_available():
        raise DeviceUnavailableError("CUDA was asked for but no CUDA device is available on this machine")
    return torch.device(name)


def build_network(config: ModelConfig) -> UNETR:
    """Instantiate the UNETR described by ``config.architecture`` (random weights)."""
    from monai.networks.nets import UNETR

    kwargs = {k: v for k, v in config.architecture.items() if k != "name"}
    kwargs["img_size"] = tuple(kwargs["img_size"])
    try:
        return UNETR(**kwargs)
    except (TypeError, ValueError, AssertionError) as exc:
        raise ModelConfigError(f"cannot build UNETR from the config: {exc}") from exc


def read_config(model_dir: str | Path) -> ModelConfig:
    """Read and validate ``config.json`` of a model directory."""
    path = Path(model_dir) / CONFIG_NAME
    if not path.is_file():
        raise ModelConfigError(f"no {CONFIG_NAME} in model directory {model_dir}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelConfigError(f"cannot read {path}: {exc}") from exc
    return ModelConfig.from_dict(data)


class LoadedModel:
    """A verified model ready for inference.

    Attributes:
        config: The parsed config.
        network: The UNETR with its weights, in eval mode, on the CPU. Built on first use when the model
            was loaded for its ONNX export (the backends that run the export never need it).
        directory: Where it was loaded from.
        n_parameters: Number of parameters.
        onnx_path: The verified ONNX export (checksum and source weights checked), when the model has
            one and a backend that runs it may be used; None otherwise.
    """

    def __init__(
        self,
        config: ModelConfig,
        network: torch.nn.Module | None,
        directory: Path,
        n_parameters: int,
        onnx_path: Path | None = None,
        *,
        build: Callable[[], torch.nn.Module] | None = None,
    ) -> None:
        if network is None and build is None:
            raise ValueError("a LoadedModel needs its network or a way to build it")
        self.config = config
        self.directory = Path(directory)
        self.n_parameters = n_parameters
        self.onnx_path = onnx_path
        self._network = network
        self._build = build

    @property
    def network(self) -> torch.nn.Module:
        """The PyTorch network (built and filled with the verified weights on first use)."""
        if self._network is None:
            assert self._build is not None
            self._network = self._build()
        return self._network

    def with_config(self, config: ModelConfig) -> LoadedModel:
        """The same weights and export with another config (e.g. other inference settings)."""
        return LoadedModel(
            config, self._network, self.directory, self.n_parameters, self.onnx_path, build=self._build
        )

    def with_postprocessing(self, **changes: Any) -> LoadedModel:
        """The same model with some postprocessing fields changed (e.g. ``fp_reduction=None``)."""
        post = replace(self.config.postprocessing, **changes)
        return self.with_config(replace(self.config, postprocessing=post))


def load_state_dict_checked(network: torch.nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """Load ``state`` into ``network``, refusing any missing, unexpected or wrong-size tensor.

    Raises:
        ModelWeightsMismatchError: Naming the first offending tensors.
    """
    own = network.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = [
        f"{k}: weights {tuple(state[k].shape)} vs architecture {tuple(own[k].shape)}"
        for k in own
        if k in state and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or wrong:
        parts = []
        if wrong:
            parts.append(f"{len(wrong)} tensors of the wrong size (e.g. {'; '.join(wrong[:3])})")
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})")
        raise ModelWeightsMismatchError(
            f"the weights in {source} do not match the architecture in config.json: " + "; ".join(parts)
        )
    network.load_state_dict(state, strict=True)


def verify_onnx_export(directory: Path, config: ModelConfig) -> Path | None:
    """The model's ONNX export, verified; None when the config records none.

    Raises:
        StaleExportError: The export was made from other weights than ``config.weights_sha256``.
        ModelIntegrityError: The export file is missing or its sha256 differs from the record.
    """
    export = config.onnx_export
    if export is None:
        return None
    if export.weights_sha256 != config.weights_sha256:
        raise StaleExportError(
            f"refusing the stale ONNX export {directory / export.file}: it was made from weights sha256 "
            f"{export.weights_sha256} but the model's weights are {config.weights_sha256}; run bm-export again"
        )
    path = directory / export.file
    if not path.is_file():
        raise ModelIntegrityError(
            f"config.json records an ONNX export but {path} is missing; run bm-export again or use --backend torch"
        )
    actual = sha256_file(path)
    if actual != export.sha256:
        raise ModelIntegrityError(
            f"refusing {path}: its sha256 is {actual} but config.json expects {export.sha256}"
        )
    return path


def load_model(model_dir: str | Path = DEMO_MODEL_DIR, *, backend: str | None = None) -> LoadedModel:
    """Load a model directory: read the config, verify the weights' sha256, build and fill the UNETR.

    Args:
        model_dir: The model directory.
        backend: The inference backend that will run it (default: the config's ``inference.backend``).
            Unless it is ``torch``, a recorded ONNX export is verified too (:func:`verify_onnx_export`).

    Raises:
        ModelConfigError: Missing/invalid config, or missing ``weights_sha256``.
        ModelIntegrityError: The weights file or the ONNX export is missing or its sha256 differs from
            the config's, or the export is stale (:class:`~segmentation.errors.StaleExportError`).
        ModelWeightsMismatchError: The weights do not fit the configured architecture.
        BackendUnavailableError: ``onnx`` or ``openvino`` asked for but the model has no export.
    """
    directory = Path(model_dir)
    config = read_config(directory)
    backend = backend or config.inference.backend
    if backend not in BACKENDS:
        raise ModelConfigError(f"unknown backend {backend!r}; use {', '.join(BACKENDS)}")
    weights = directory / WEIGHTS_NAME
    if not weights.is_file():
        raise ModelIntegrityError(f"no {WEIGHTS_NAME} in model directory {directory}")
    if not config.weights_sha256:
        raise ModelConfigError(
            f"{directory / CONFIG_NAME} records no weights_sha256; refusing unverified weights"
        )
    actual = sha256_file(weights)
    if actual != config.weights_sha256:
        raise ModelIntegrityError(
            f"refusing {weights}: its sha256 is {actual} but config.json expects {config.weights_sha256}"
        )
    onnx_path = None if backend == "torch" else verify_onnx_export(directory, config)
    if backend in EXPORT_BACKENDS and onnx_path is None:
        raise BackendUnavailableError(
            f"the {backend} backend was asked for but {directory} has no ONNX export; "
            f"run bm-export {directory} first"
        )
    if onnx_path is not None and config.onnx_export is not None:
        # The export was checked against these very weights when it was made: the PyTorch network is
        # built only if something asks for it (the CUDA path, a comparison).
        n_parameters = int(config.onnx_export.extra.get("parameters", 0))
        return LoadedModel(
            config, None, directory, n_parameters, onnx_path, build=lambda: _build_filled(config, weights)
        )
    network = _build_filled(config, weights)
    return LoadedModel(config, network, directory, sum(p.numel() for p in network.parameters()), onnx_path)


def _build_filled(config: ModelConfig, weights: Path) -> torch.nn.Module:
    """The UNETR of ``config`` filled with the (already verified) ``weights``, in eval mode."""
    import torch

    network = build_network(config)
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several unrelated types for corrupt files
        raise ModelIntegrityError(f"cannot read {weights}: {exc}") from exc
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, Mapping):
        raise ModelWeightsMismatchError(f"{weights} does not hold a state_dict")
    load_state_dict_checked(network, state, str(weights))
    network.eval()
    return network


def library_versions() -> dict[str, str]:
    """Versions of the libraries a model depends on, recorded in its config."""
    import monai
    import numpy
    import SimpleITK
    import torch

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "monai": monai.__version__,
        "numpy": numpy.__version__,
        "SimpleITK": SimpleITK.Version_VersionString(),
    }


def save_model_dir(
    network: torch.nn.Module, config: ModelConfig, model_dir: str | Path, card: str | None = None
) -> Path:
    """Write a complete model directory: ``weights.pt``, then ``config.json`` with its sha256.

    Files are written to temporary names and renamed, so a reader never sees a half-written model.
    ``card`` (Markdown) is written to ``MODEL_CARD.md`` when given.
    """
    import torch

    directory = Path(model_dir)
    directory.mkdir(parents=True, exist_ok=True)
    tmp_weights = directory / (WEIGHTS_NAME + ".tmp")
    torch.save({k: v.detach().cpu().contiguous() for k, v in network.state_dict().items()}, tmp_weights)
    digest = sha256_file(tmp_weights)
    data = config.to_dict()
    data["weights_sha256"] = digest
    # New weights have no export yet (bm-export makes one); an old record would only be refused as stale.
    data.pop("onnx_export", None)
    data.setdefault("versions", library_versions())
    tmp_config = directory / (CONFIG_NAME + ".tmp")
    tmp_config.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp_weights.replace(directory / WEIGHTS_NAME)
    tmp_config.replace(directory / CONFIG_NAME)
    if card is not None:
        (directory / "MODEL_CARD.md").write_text(card, encoding="utf-8")
    return directory
