"""The model registry: which segmentation model the pipeline runs for a trial, loaded once per process.

Each trial has its own active model (:class:`~trials.models.TrialModel`, README "Model governance"); the
pipeline runs it and nothing else. A trial without an active model may run only the demo model, and only
when it is a demo trial: the service's configured model directory (``PIPELINE_MODEL_DIR``, default the
shipped demo model) is then registered on first use. Any other model is refused with
:class:`ModelNotApprovedError`, which fails the job with a message saying what to do.

A version's identity is its weights and configuration checksums: the directory of an active version is
checked against both before it runs, so a model directory edited after approval is refused.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.conf import settings

from segmentation.model import LoadedModel, load_model
from segmentation.modeldir import DEMO_MODEL_DIR, config_sha256
from trials.choices import ModelLifecycle, TrialModelStatus
from trials.exceptions import InvalidStateError
from trials.models import ModelVersion, Trial, TrialModel
from trials.records.imaging import register_model_directory

#: Loaded models of this process, keyed by directory and config modification time (one at a time).
_MODEL_CACHE: dict[tuple[str, str, str], LoadedModel] = {}


class ModelNotApprovedError(InvalidStateError):
    """The model the pipeline would run is not approved and active for the series' trial."""


def configured_model_dir() -> Path:
    """The service's configured model directory (``PIPELINE_MODEL_DIR``, default the shipped demo model)."""
    return Path(getattr(settings, "PIPELINE_MODEL_DIR", "") or DEMO_MODEL_DIR)


def _load(directory: Path) -> LoadedModel:
    config_path = directory / "config.json"
    backend = str(getattr(settings, "PIPELINE_BACKEND", "")) or None
    key = (
        str(directory.resolve()),
        str(config_path.stat().st_mtime_ns) if config_path.exists() else "",
        backend or "",
    )
    model = _MODEL_CACHE.get(key)
    if model is None:
        # Verifies the weights and, unless the backend is torch, the ONNX export (checksum, not stale).
        model = load_model(directory, backend=backend)
        _MODEL_CACHE.clear()
        _MODEL_CACHE[key] = model
    return model


def load_pipeline_model(
    *, actor: Any | None = None, correlation_id: str = ""
) -> tuple[LoadedModel, ModelVersion]:
    """Load the service's configured model directory (cached per process) and its ``ModelVersion`` row,
    registered on first use (identity: weights and configuration checksums).

    Raises:
        ModelError: The directory is missing, incomplete or its checksum does not match.
    """
    directory = configured_model_dir()
    model = _load(directory)
    version, _ = register_model_directory(
        directory,
        actor=actor,
        reason="model registered on first use by the pipeline",
        correlation_id=correlation_id,
    )
    return model, version


def load_trial_model(
    trial: Trial, *, actor: Any | None = None, correlation_id: str = ""
) -> tuple[LoadedModel, ModelVersion]:
    """The model the pipeline runs for ``trial``: its active model, or the demo model in a demo trial.

    Raises:
        ModelNotApprovedError: no active model approved for the trial (and not the demo model in a demo
            trial), the active version is retired, or its directory no longer holds the approved weights
            and configuration.
        ModelError: the model directory is missing or damaged.
    """
    active = (
        TrialModel.objects.filter(trial=trial, status=TrialModelStatus.ACTIVE)
        .select_related("model_version")
        .first()
    )
    if active is None:
        model, version = load_pipeline_model(actor=actor, correlation_id=correlation_id)
        if version.is_demo and trial.is_demo:
            return model, version
        raise ModelNotApprovedError(
            f"Trial {trial.code} has no active segmentation model: the configured model {version} is not "
            "approved for it. A trial admin validates a model, approves it for the trial (signed) and "
            'activates it (README "Model governance").'
        )
    version = active.model_version
    if version.lifecycle == ModelLifecycle.RETIRED:
        raise ModelNotApprovedError(f"The active model of trial {trial.code}, {version}, is retired.")
    model = load_version_model(
        version,
        what=f"the approved weights and configuration of trial {trial.code}'s active model",
        then="validate and approve it",
    )
    return model, version


def load_version_model(version: ModelVersion, *, what: str = "", then: str = "") -> LoadedModel:
    """Load a registered version's directory (cached per process), checked against its identity.

    Args:
        version: The registered version.
        what: How the error names what the directory should hold (default: the version's registered
            weights and configuration).
        then: What to do after registering the changed model (default: validate it).

    Raises:
        ModelNotApprovedError: the directory no longer holds the version's weights and configuration.
        ModelError: the directory is missing or damaged.
    """
    directory = Path(version.weights_path) if version.weights_path else configured_model_dir()
    model = _load(directory)
    if (
        model.config.weights_sha256 != version.weights_sha256
        or config_sha256(model.config.to_dict()) != version.config_sha256
    ):
        raise ModelNotApprovedError(
            f"The model directory of {version} ({directory}) no longer holds "
            f"{what or 'its registered weights and configuration'}: register the changed model as a "
            f"new version, {then or 'validate it'}."
        )
    return model


__all__ = [
    "ModelNotApprovedError",
    "configured_model_dir",
    "load_pipeline_model",
    "load_trial_model",
    "load_version_model",
]
