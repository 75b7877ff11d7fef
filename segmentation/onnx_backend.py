"""The CPU inference backend: the model's UNETR exported to ONNX and run by ONNX Runtime.

PyTorch stays the reference and the training path; this backend runs the same weights faster on CPUs
(sites without a GPU). ONNX Runtime was chosen over OpenVINO: one pinned wheel of about 17 MB, no
extra conversion step, and on the paper-size UNETR it is 25-30 % faster per window than eager PyTorch on
the 2-core development machine (measured in ``python -m bench segmentation``).

* :func:`export_onnx` (``bm-export MODEL_DIR``) writes ``model.onnx`` next to ``weights.pt`` and records
  it in ``config.json`` -> ``onnx_export``: its sha256, the sha256 of the weights it was made from, the
  opset, the library versions and the largest probability difference against PyTorch on a random
  window (refused above :data:`EXPORT_TOLERANCE`).
* :class:`OnnxPredictor` runs windows through an ONNX Runtime session with all graph optimisations and
  one intra-op thread per core this process may use.

The export is float32: no quantisation. A quantised network is another model (new version, own
validation), never a silent swap of this one.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from segmentation.errors import BackendUnavailableError, ModelError
from segmentation.io import sha256_file
from segmentation.model import LoadedModel, OnnxExport, load_model
from segmentation.modeldir import CONFIG_NAME, ONNX_NAME

if TYPE_CHECKING:
    import torch

#: The exported graph's opset (supported by ONNX Runtime 1.31 and torch's TorchScript exporter).
OPSET = 17
#: Largest absolute difference of the lesion probability between the export and PyTorch that
#: :func:`export_onnx` accepts on its check window (the accuracy contract of the backend).
EXPORT_TOLERANCE = 1e-3


def cpu_threads() -> int:
    """Cores this process may run on (its CPU affinity, not the machine's count), at most
    ``OMP_NUM_THREADS`` when that is set (as PyTorch's CPU path honours it)."""
    try:
        cores = max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        cores = max(1, os.cpu_count() or 1)
    limit = os.environ.get("OMP_NUM_THREADS", "")
    return min(cores, int(limit)) if limit.isdigit() and int(limit) > 0 else cores


def _lesion_probability(logits: np.ndarray) -> np.ndarray:
    """Sigmoid of the lesion logit of (batch, 1 or 2, ...) network outputs, float32 (batch, 1, ...)."""
    logit = logits if logits.shape[1] == 1 else logits[:, 1:2] - logits[:, 0:1]
    return (1.0 / (1.0 + np.exp(-logit.astype(np.float32)))).astype(np.float32)


class OnnxPredictor:
    """An ONNX Runtime session over a verified export: windows (batch, 1, z, y, x) in, probability out.

    Args:
        path: The ``model.onnx`` file (verified by :func:`segmentation.model.load_model`).
        threads: Intra-op threads (default: :func:`cpu_threads`).
    """

    def __init__(self, path: Path, threads: int | None = None) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:  # pragma: no cover - a pinned dependency
            raise BackendUnavailableError("the ONNX backend needs the onnxruntime package") from exc
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # One operator at a time, each spread over every core: the UNETR is a chain, so inter-op
        # parallelism has nothing to overlap and would only oversubscribe the cores.
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.intra_op_num_threads = threads or cpu_threads()
        options.inter_op_num_threads = 1
        # Measured on the paper-size UNETR (2 cores, machine shared): without the memory arena the peak
        # memory of a 96^3 window falls from 1.30 to 0.86 GB (batch 4: 3.30 to 1.97 GB) at the same CPU
        # time; threads that sleep instead of spinning between operators cost less CPU per window
        # (2.3 against 2.6 s) and leave the cores to other work on a shared node.
        options.enable_cpu_mem_arena = False
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.threads = options.intra_op_num_threads
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, windows: np.ndarray) -> np.ndarray:
        """Lesion probability (float32, batch x 1 x window) of float32 windows (batch x 1 x window)."""
        (logits,) = self.session.run(None, {self.input_name: np.ascontiguousarray(windows, dtype=np.float32)})
        return _lesion_probability(logits)


def _export_file(network: torch.nn.Module, roi_zyx: tuple[int, ...], path: Path, opset: int) -> None:
    """Export with a dynamic batch axis through torch's TorchScript exporter.

    The TorchScript exporter needs no extra package (the dynamo exporter needs onnxscript) and handles
    MONAI's UNETR as it is; :func:`export_onnx` checks the result numerically either way.
    """
    import torch

    example = torch.zeros((1, 1, *roi_zyx), dtype=torch.float32)
    with torch.no_grad(), warnings.catch_warnings():
        # Known and harmless here: the exporter's deprecation notice, tracer notes on shape checks that
        # are constant for a fixed window, and InstanceNorm exported with train=True (it always
        # normalises with the statistics of its input, which is what the network does in eval mode).
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=".*instance_norm.*", category=UserWarning)
        torch.onnx.export(
            network,
            (example,),
            str(path),
            dynamo=False,
            opset_version=opset,
            input_names=["image"],
            output_names=["logits"],
            dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}},
        )


def export_onnx(model_dir: str | Path, *, opset: int = OPSET, seed: int = 0) -> OnnxExport:
    """Export a model directory's UNETR to ``model.onnx`` and record it in its ``config.json``.

    The export is checked before it is recorded: PyTorch and ONNX Runtime run one random window (batch
    of 2, seeded) and the lesion probabilities must agree within :data:`EXPORT_TOLERANCE`. Files are
    written under temporary names and renamed, as :func:`segmentation.model.save_model_dir` does.

    Returns:
        The new ``onnx_export`` record.

    Raises:
        ModelError: The directory cannot be loaded (checksum, config), or the export disagrees with
            PyTorch beyond the tolerance (nothing is recorded then).
    """
    import onnxruntime
    import torch

    directory = Path(model_dir)
    model = load_model(directory, backend="torch")
    roi_zyx = tuple(int(v) for v in model.config.inference.roi_size)[::-1]
    tmp = directory / (ONNX_NAME + ".tmp")
    try:
        _export_file(model.network, roi_zyx, tmp, opset)
        rng = np.random.default_rng(seed)
        window = rng.random((2, 1, *roi_zyx), dtype=np.float32)
        with torch.inference_mode():
            reference = _lesion_probability(model.network(torch.from_numpy(window)).numpy())
        exported = OnnxPredictor(tmp)(window)
        max_abs_diff = float(np.abs(exported - reference).max())
        if not max_abs_diff <= EXPORT_TOLERANCE:
            raise ModelError(
                f"the ONNX export of {directory} differs from PyTorch by {max_abs_diff:.2e} in probability "
                f"(tolerance {EXPORT_TOLERANCE:g}); nothing recorded"
            )
        record = OnnxExport(
            file=ONNX_NAME,
            sha256=sha256_file(tmp),
            weights_sha256=model.config.weights_sha256,
            opset=opset,
            max_abs_diff=max_abs_diff,
            extra={
                "parameters": model.n_parameters,
                "exported_at": dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat(),
                "versions": {"torch": torch.__version__, "onnxruntime": onnxruntime.__version__},
            },
        )
        config_path = directory / CONFIG_NAME
        data: dict[str, Any] = json.loads(config_path.read_text(encoding="utf-8"))
        data["onnx_export"] = record.to_dict()
        tmp_config = directory / (CONFIG_NAME + ".tmp")
        tmp_config.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        tmp.replace(directory / ONNX_NAME)
        tmp_config.replace(config_path)
    finally:
        tmp.unlink(missing_ok=True)
    return record


#: Sessions of this process, keyed by export path, its sha256 and the thread count.
_SESSIONS: dict[tuple[str, str, int], OnnxPredictor] = {}


def predictor_of(model: LoadedModel, threads: int | None = None) -> OnnxPredictor:
    """The ONNX Runtime session of a loaded model, created once per model (and thread count)."""
    if model.onnx_path is None:
        raise BackendUnavailableError(
            f"{model.directory} has no verified ONNX export; run bm-export {model.directory} first"
        )
    export = model.config.onnx_export
    key = (str(model.onnx_path.resolve()), export.sha256 if export else "", threads or cpu_threads())
    predictor = _SESSIONS.get(key)
    if predictor is None:
        # One model per process at a time (as the pipeline's model cache): drop older sessions.
        _SESSIONS.clear()
        predictor = _SESSIONS[key] = OnnxPredictor(model.onnx_path, key[2])
    return predictor


__all__ = ["EXPORT_TOLERANCE", "OPSET", "OnnxPredictor", "cpu_threads", "export_onnx", "predictor_of"]
