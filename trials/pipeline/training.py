"""The fine-tuning job (queue ``gpu``): a model trained on an exported training set with
:func:`segmentation.train.train` (``bm-train``'s Python API), registered as a new version (README "Learning
from the readers").

Method ``paper`` (Dessoude et al.): the base version's weights (``--init-from``), only the output block
trained (``--freeze-encoder``), BCE; ``full``: the base version's architecture trained from new weights,
BCE. The new version is *registered*, approved for no trial: the pipeline refuses it until it is
validated and a trial admin approves and activates it. Its configuration carries ``training_set`` (the
training set, its manifest sha256, method, base version and training patients), which becomes part of
its ``training_provenance``; the validation job leaves those patients out.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from django.conf import settings

from segmentation.errors import ModelError
from segmentation.io import sha256_file
from segmentation.model import EXPORT_BACKENDS, ModelConfig, load_model
from segmentation.modeldir import config_sha256
from segmentation.train import TrainingError, TrainOptions, nifti_pair_sources, train
from trials.exceptions import InvalidStateError
from trials.models import ModelVersion, ProcessingJob, TrainingSet
from trials.pipeline.jobs import claim, heartbeat, job_context, progress
from trials.pipeline.training_sets import MANIFEST_NAME, sanitise
from trials.records.imaging import register_model_directory
from trials.records.jobs import finish_job, start_job
from trials.storage import media_path

#: Share of the job's time limit (``PIPELINE_JOB_TIME_LIMIT_S``) training may use: it stops after the
#: epoch that passes it and keeps the best model so far, leaving time to register it.
TIME_SHARE = 0.8


def run_training(
    job_id: int, *, dispatch_id: str = "", actor_id: int | None = None, correlation_id: str = ""
) -> dict[str, Any] | None:
    """Run a fine-tuning job: train on the training set, register the model as a new version.

    Returns:
        The new version's id and the best validation metrics, or None when there is nothing to do.

    Raises:
        InvalidStateError: the training set's files changed since the export, the base version's directory
            no longer holds its weights and configuration, or training cannot run on the data.
    """
    job = claim(job_id, dispatch_id)
    if job is None:
        return None
    job = start_job(job, stage="training")
    with heartbeat(job):
        return _train(job, actor_id=actor_id, correlation_id=correlation_id)


def _base_config(base: ModelVersion) -> tuple[Path, ModelConfig]:
    directory = Path(base.weights_path)
    model = load_model(directory, backend="torch")
    if (model.config.weights_sha256, config_sha256(model.config.to_dict())) != (
        base.weights_sha256,
        base.config_sha256,
    ):
        raise InvalidStateError(
            f"The model directory of {base} no longer holds its weights and configuration."
        )
    return directory, model.config


def _train(job: ProcessingJob, *, actor_id: int | None, correlation_id: str) -> dict[str, Any]:
    actor, cid = job_context(job, actor_id, correlation_id)
    params = job.params
    training_set = TrainingSet.objects.select_related("trial").get(pk=params["training_set_id"])
    trial = training_set.trial
    base = ModelVersion.objects.get(pk=params["base_version_id"])
    folder = media_path(training_set.directory)
    manifest = folder / MANIFEST_NAME
    if not manifest.is_file() or sha256_file(manifest) != training_set.manifest_sha256:
        raise InvalidStateError(
            f"The files of training set {training_set.pk} changed since it was exported: export it again."
        )
    progress(job, 5, "training", "loading the base model")
    base_dir, config = _base_config(base)
    method, epochs = params["method"], int(params["epochs"])
    version = f"ft{job.pk}"
    name = f"{base.name}-{sanitise(trial.code).lower()}"[:90]
    label = f"fine-tuned ({method}) on the signed reads of {trial.code}: validate and approve before use"
    if base.is_demo:
        label += "; from the demo model, not for clinical use"
    data = {**config.to_dict(), "name": name, "version": version, "label": label}
    data.pop("onnx_export", None)  # the base's export is of other weights
    if data["inference"].get("backend") in EXPORT_BACKENDS:
        data["inference"] = {**data["inference"], "backend": "auto"}
    data["training_set"] = {
        "training_set_id": training_set.pk,
        "trial": trial.code,
        "trial_id": trial.pk,
        "manifest_sha256": training_set.manifest_sha256,
        "method": method,
        "base_version": str(base),
        "base_version_id": base.pk,
        "base_weights_sha256": base.weights_sha256,
        "training_patients": list(training_set.training_patients),
        "held_out_patients": list(training_set.held_out_patients),
    }
    export_dir = media_path(f"models/{sanitise(name)}-{version}")

    def on_epoch(entry: dict[str, Any]) -> None:
        done = int(entry["epoch"]) + 1
        progress(job, 10 + 80 * done // epochs, "training", f"epoch {done}/{epochs}")

    try:
        sources = nifti_pair_sources(folder)
        with tempfile.TemporaryDirectory(prefix="mettrack-train-") as run_dir:
            options = TrainOptions(
                run_dir=Path(run_dir),
                export_dir=export_dir,
                epochs=epochs,
                steps_per_epoch=int(params["steps_per_epoch"]),
                batch_size=int(params["batch_size"]),
                loss="bce",
                freeze_encoder=method == "paper",
                seed=int(params.get("seed", 0)),
                # Stop in time: past its limit the sweep fails the job (and the broker would send it again).
                max_minutes=TIME_SHARE * job.time_limit_s / 60.0 if job.time_limit_s else None,
                device=str(getattr(settings, "PIPELINE_DEVICE", "auto")),
                command=f"MetTrack fine-tuning job {job.pk}: {method} on training set {training_set.pk}",
            )
            summary = train(
                ModelConfig.from_dict(data),
                sources,
                options,
                init_from=base_dir if method == "paper" else None,
                data_description=f"training set {training_set.pk} of {trial.code} "
                f"(manifest sha256 {training_set.manifest_sha256})",
                on_epoch=on_epoch,
            )
    except TrainingError as exc:
        raise InvalidStateError(f"Training set {training_set.pk} cannot be trained on: {exc}") from exc
    progress(job, 92, "exporting", "ONNX export for the CPU backends")
    cpu_export = _export_for_cpu(export_dir)
    progress(job, 95, "registering")
    registered, _ = register_model_directory(
        export_dir,
        actor=actor,
        reason=f"fine-tuned ({method}) from {base} on training set {training_set.pk}",
        correlation_id=cid,
    )
    best = summary["best"]
    result = {
        "model_version_id": registered.pk,
        "model_version": str(registered),
        "best_epoch": best.get("epoch"),
        "val_dice": best.get("dice"),
        "cpu_export": cpu_export,
    }
    finish_job(
        job,
        result=result,
        message=f"{registered} registered: validate and approve it before use",
        actor=actor,
        correlation_id=cid,
    )
    return result


def _export_for_cpu(model_dir: Path) -> dict[str, Any]:
    """Export new weights for the CPU backends (``bm-export``), so that the version validates and runs
    on OpenVINO or ONNX Runtime like its base. A failed export leaves the version on PyTorch (the
    reference path, slower on CPUs): the job reports why instead of failing the training."""
    from segmentation.onnx_backend import export_onnx

    try:
        record = export_onnx(model_dir)
    except ModelError as exc:
        return {"exported": False, "error": str(exc)}
    return {
        "exported": True,
        "sha256": record.sha256,
        "max_abs_diff_by_runtime": record.extra.get("max_abs_diff_by_runtime", {}),
    }


__all__ = ["run_training"]
