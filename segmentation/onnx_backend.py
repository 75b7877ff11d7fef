"""The CPU inference backends: the model's UNETR exported to ONNX, run by OpenVINO or ONNX Runtime.

PyTorch stays the reference and the training path; these backends run the same weights faster on CPUs
(sites without a GPU). Both read the same verified ``model.onnx``, so there is one export per model and
one record of it:

* ``openvino`` (the default on the CPU when installed): OpenVINO's CPU plugin (oneDNN kernels) reads the
  ONNX file directly and compiles it for the machine. On the paper-size UNETR it ran a 96^3 window in
  0.5-0.6 of ONNX Runtime's time on the 2-core development machine (``python -m bench segmentation``).
  Compiling costs 1-3 s per process, once (the worker keeps its model). Its instance norms are
  rewritten with two-stage statistics before compiling (:func:`precise_instance_norms`), which brings
  it from 2.5e-3 to 9e-6 of PyTorch's probabilities on the real MRI.
* ``onnx``: ONNX Runtime's CPU execution provider; a smaller wheel, compiles in a fraction of that.

* :func:`export_onnx` (``bm-export MODEL_DIR``) writes ``model.onnx`` next to ``weights.pt`` and records
  it in ``config.json`` -> ``onnx_export``: its sha256, the sha256 of the weights it was made from, the
  opset, the library versions and the largest probability difference against PyTorch of each installed
  runtime on a random window (refused above :data:`EXPORT_TOLERANCE`).
* :class:`OnnxPredictor` and :class:`OpenVinoPredictor` run windows with all graph optimisations and
  one thread per core this process may use; :func:`predictor_of` keeps one per process.

Both run float32: no quantisation, and OpenVINO is told so explicitly (on CPUs with bf16 units it would
otherwise pick bf16 by itself). A quantised network is another model (new version, own validation),
never a silent swap of this one.
"""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import importlib.util
import json
import os
import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from segmentation.errors import BackendUnavailableError, ModelError
from segmentation.io import sha256_file
from segmentation.model import EXPORT_BACKENDS, LoadedModel, OnnxExport, load_model
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


#: The Python package of each backend that runs the export.
RUNTIME_PACKAGES = {"onnx": "onnxruntime", "openvino": "openvino"}


def runtime_available(backend: str) -> bool:
    """Whether the runtime of an export backend (``onnx``, ``openvino``) is installed (not imported)."""
    return importlib.util.find_spec(RUNTIME_PACKAGES[backend]) is not None


def import_openvino() -> Any:
    """Import OpenVINO with its usage telemetry blocked; every import of it in MetTrack goes through here.

    ``import openvino`` imports its model converter, which by default (no consent file in
    ``~/intel``) writes a client id and a usage count there and sends an "import" event to Google
    Analytics. A clinical service must not report to anyone, so the telemetry package is made
    unimportable in this process before OpenVINO is imported; OpenVINO then uses its own no-op stub,
    and nothing is written or sent (tested with an empty home directory). Written by hand: OpenVINO has
    no setting for this besides a consent file per user or a ``CI`` environment variable.

    Raises:
        BackendUnavailableError: The openvino package is not installed.
    """
    # A None entry makes "import openvino_telemetry" raise ImportError (the stub's trigger). Left
    # alone if something imported the real package earlier: nothing here can undo that.
    sys.modules.setdefault("openvino_telemetry", None)  # type: ignore[arg-type]
    try:
        import openvino
    except ImportError as exc:
        raise BackendUnavailableError(
            "the openvino backend needs the openvino package; use --backend onnx"
        ) from exc
    return openvino


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


def _two_stage_mean(x: Any) -> Any:
    """Mean of an (N, C, D, H, W) OpenVINO output over D, H and W, kept as (N, C, 1, 1, 1): over W
    first, then over D x H. The Reshape between the two reductions keeps OpenVINO from merging them
    back into one (its ReduceMerge transformation). Called by :func:`precise_instance_norms`, which has
    imported OpenVINO through :func:`import_openvino`."""
    from openvino import opset13 as ops

    def axis(a: int) -> Any:
        return ops.constant(np.array([a], dtype=np.int64))

    m = ops.reduce_mean(x, axis(4), keep_dims=False)
    m = ops.reshape(m, ops.constant(np.array([0, 0, -1], dtype=np.int64)), special_zero=True)
    m = ops.reduce_mean(m, axis(2), keep_dims=False)
    return ops.reshape(m, ops.constant(np.array([0, 0, 1, 1, 1], dtype=np.int64)), special_zero=True)


def precise_instance_norms(model: Any) -> int:
    """Rewrite the instance norms of an OpenVINO model (MVN over D, H, W) with two-stage statistics.

    Written by hand because no OpenVINO setting does it: its MVN kernel sums the statistics of a whole
    feature map (884,736 voxels in a 96^3 window) in float32 lanes, about 1e-5 relative error, which
    the UNETR's later layers amplify to probabilities 2.5e-3 away from PyTorch's in the demo model's
    windows of the real MRI (ONNX Runtime: 4.3e-4). Mean and variance taken in two stages, of ``W``
    and then ``D x H`` terms (the variance around the mean, as PyTorch takes it), bring that to 9e-6
    (1.5e-5 on the native grid), at about 3 % of the time.
    Layer norms (768 terms) are left as they are.

    Returns:
        The number of instance norms rewritten.
    """
    import_openvino()
    from openvino import opset13 as ops
    from openvino.passes import ConstantFolding, Manager

    # The ONNX frontend computes MVN axes from the input's rank: fold them into constants first.
    manager = Manager()
    manager.register_pass(ConstantFolding())
    manager.run_passes(model)
    rewritten = 0
    for node in model.get_ordered_ops():
        if node.get_type_name() != "MVN" or node.input_value(1).get_node().get_type_name() != "Constant":
            continue
        rank = node.input_value(0).get_partial_shape().rank
        attrs = node.get_attributes()
        if not rank.is_static or rank.get_length() != 5 or not attrs["normalize_variance"]:
            continue
        if sorted(int(a) % 5 for a in node.input_value(1).get_node().get_vector()) != [2, 3, 4]:
            continue
        data = node.input_value(0)
        centred = ops.subtract(data, _two_stage_mean(data))
        variance = _two_stage_mean(ops.multiply(centred, centred))
        eps = ops.constant(np.array(attrs["eps"], dtype=np.float32))
        if str(attrs["eps_mode"]).lower() == "inside_sqrt":
            scale = ops.sqrt(ops.add(variance, eps))
        else:
            scale = ops.add(ops.sqrt(variance), eps)
        normalised = ops.divide(centred, scale)
        for target in list(node.output(0).get_target_inputs()):
            target.replace_source_output(normalised.output(0))
        rewritten += 1
    model.validate_nodes_and_infer_types()
    return rewritten


class OpenVinoPredictor:
    """The export compiled by OpenVINO for this CPU: windows (batch, 1, z, y, x) in, probability out.

    Its instance norms are rewritten with two-stage statistics first (:func:`precise_instance_norms`;
    ``n_precise_norms`` counts them).

    Args:
        path: The ``model.onnx`` file (verified by :func:`segmentation.model.load_model`).
        threads: Inference threads (default: :func:`cpu_threads`).
    """

    def __init__(self, path: Path, threads: int | None = None) -> None:
        ov = import_openvino()
        self.threads = threads or cpu_threads()
        config = {
            # One request at a time, each spread over the threads: the sliding window is sequential.
            "PERFORMANCE_HINT": "LATENCY",
            "NUM_STREAMS": 1,
            "INFERENCE_NUM_THREADS": self.threads,
            # float32 always: on CPUs with bf16 units (AVX-512 BF16, AMX) OpenVINO would run bf16 by
            # default, and it may quantise matrix products on the fly; either would be another model.
            "INFERENCE_PRECISION_HINT": "f32",
            "DYNAMIC_QUANTIZATION_GROUP_SIZE": 0,
            # No pinning of threads to cores: several workers may share a server (as ONNX Runtime's
            # threads, which are not pinned either).
            "ENABLE_CPU_PINNING": False,
        }
        core = ov.Core()
        model = core.read_model(str(path))
        self.n_precise_norms = precise_instance_norms(model)
        self.compiled = core.compile_model(model, "CPU", config)
        self.request = self.compiled.create_infer_request()

    def __call__(self, windows: np.ndarray) -> np.ndarray:
        """Lesion probability (float32, batch x 1 x window) of float32 windows (batch x 1 x window)."""
        self.request.infer({0: np.ascontiguousarray(windows, dtype=np.float32)})
        # The output tensor is the request's own buffer: the probability is a new array.
        return _lesion_probability(self.request.get_output_tensor(0).data)


#: The predictor class of each backend that runs the export.
PREDICTORS: dict[str, type[OnnxPredictor] | type[OpenVinoPredictor]] = {
    "onnx": OnnxPredictor,
    "openvino": OpenVinoPredictor,
}


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

    The export is checked before it is recorded: PyTorch and every installed runtime of the export
    (ONNX Runtime, OpenVINO) run one random window (batch of 2, seeded), and each runtime's lesion
    probabilities must agree with PyTorch's within :data:`EXPORT_TOLERANCE`. Files are written under
    temporary names and renamed, as :func:`segmentation.model.save_model_dir` does.

    Returns:
        The new ``onnx_export`` record.

    Raises:
        ModelError: The directory cannot be loaded (checksum, config), or a runtime's result disagrees
            with PyTorch beyond the tolerance (nothing is recorded then).
    """
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
        diffs: dict[str, float] = {}
        versions: dict[str, str] = {"torch": str(torch.__version__)}
        for backend in EXPORT_BACKENDS:
            if not runtime_available(backend):
                continue
            package = RUNTIME_PACKAGES[backend]
            exported = PREDICTORS[backend](tmp)(window)
            diffs[package] = float(np.abs(exported - reference).max())
            versions[package] = importlib.metadata.version(package)
        if not diffs:
            raise BackendUnavailableError("bm-export needs onnxruntime or openvino to check the export")
        worst = max(diffs, key=lambda k: diffs[k])
        if not diffs[worst] <= EXPORT_TOLERANCE:
            raise ModelError(
                f"the ONNX export of {directory} run by {worst} differs from PyTorch by {diffs[worst]:.2e} "
                f"in probability (tolerance {EXPORT_TOLERANCE:g}); nothing recorded"
            )
        record = OnnxExport(
            file=ONNX_NAME,
            sha256=sha256_file(tmp),
            weights_sha256=model.config.weights_sha256,
            opset=opset,
            max_abs_diff=diffs[worst],
            extra={
                "parameters": model.n_parameters,
                "exported_at": dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat(),
                "versions": versions,
                "max_abs_diff_by_runtime": diffs,
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


#: Predictors of this process, keyed by backend, export path, its sha256 and the thread count.
_SESSIONS: dict[tuple[str, str, str, int], OnnxPredictor | OpenVinoPredictor] = {}


def predictor_of(
    model: LoadedModel, threads: int | None = None, backend: str = "onnx"
) -> OnnxPredictor | OpenVinoPredictor:
    """The predictor of a loaded model's export on ``backend`` (``onnx`` or ``openvino``), created once
    per model, backend and thread count.

    Raises:
        BackendUnavailableError: The model has no verified export, or the backend's runtime is missing.
    """
    if model.onnx_path is None:
        raise BackendUnavailableError(
            f"{model.directory} has no verified ONNX export; run bm-export {model.directory} first"
        )
    if backend not in PREDICTORS:
        raise BackendUnavailableError(
            f"{backend!r} does not run the export; use one of {', '.join(PREDICTORS)}"
        )
    export = model.config.onnx_export
    key = (backend, str(model.onnx_path.resolve()), export.sha256 if export else "", threads or cpu_threads())
    predictor = _SESSIONS.get(key)
    if predictor is None:
        # One model per process at a time (as the pipeline's model cache): drop older sessions.
        _SESSIONS.clear()
        predictor = _SESSIONS[key] = PREDICTORS[backend](model.onnx_path, key[3])
    return predictor


__all__ = [
    "EXPORT_TOLERANCE",
    "OPSET",
    "PREDICTORS",
    "OnnxPredictor",
    "OpenVinoPredictor",
    "cpu_threads",
    "export_onnx",
    "import_openvino",
    "precise_instance_norms",
    "predictor_of",
    "runtime_available",
]
