"""The model registry: which segmentation model the pipeline runs, loaded once per process.

The model directory (``PIPELINE_MODEL_DIR``, default the shipped demo model) is registered as a
``ModelVersion`` on first use; its weights sha256 identifies it (unique in the database), so every run
records exactly which weights produced it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.conf import settings

from segmentation.model import LoadedModel, load_model
from segmentation.modeldir import DEMO_MODEL_DIR
from trials.exceptions import DuplicateError
from trials.models import ModelVersion
from trials.records.imaging import register_model_version

#: Loaded models of this process, keyed by directory and config modification time (one at a time).
_MODEL_CACHE: dict[tuple[str, str, str], LoadedModel] = {}


def _model_dir() -> Path:
    return Path(getattr(settings, "PIPELINE_MODEL_DIR", "") or DEMO_MODEL_DIR)


def load_pipeline_model(
    *, actor: Any | None = None, correlation_id: str = ""
) -> tuple[LoadedModel, ModelVersion]:
    """Load the configured model directory (cached per process) and its ``ModelVersion`` row.

    The model is registered on first use; its weights sha256 identifies it (unique in the database).

    Raises:
        ModelError: The directory is missing, incomplete or its checksum does not match.
    """
    directory = _model_dir()
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
    cfg = model.config
    version = ModelVersion.objects.filter(weights_sha256=cfg.weights_sha256).first()
    if version is None:
        try:
            version = register_model_version(
                name=cfg.name,
                version=cfg.version
                if not ModelVersion.objects.filter(name=cfg.name, version=cfg.version).exists()
                else f"{cfg.version}+{cfg.weights_sha256[:12]}",
                architecture="MONAI UNETR",
                weights_sha256=cfg.weights_sha256,
                config=cfg.to_dict(),
                weights_path=str(directory),
                training_provenance=dict(cfg.extra.get("training", {})),
                validation_metrics=dict(cfg.extra.get("metrics", {})),
                intended_use=cfg.intended_use,
                is_demo="demo" in cfg.name.lower() or "not for clinical use" in cfg.label.lower(),
                actor=actor,
                reason="model registered on first use by the pipeline",
                correlation_id=correlation_id,
            )
        except DuplicateError:  # another worker registered it at the same moment
            version = ModelVersion.objects.get(weights_sha256=cfg.weights_sha256)
    return model, version


__all__ = ["load_pipeline_model"]
