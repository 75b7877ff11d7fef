"""Actions on segmentation models: register the configured model directory as a ``ModelVersion``.

Kept apart from the other actions because loading a model imports torch and MONAI, which the web
processes never need (they hand jobs to the workers).
"""

from __future__ import annotations

from typing import Any

from trials.models import ModelVersion
from trials.pipeline.registry import load_pipeline_model


def register_pipeline_model(*, actor: Any | None = None, correlation_id: str = "") -> ModelVersion:
    """Load the configured segmentation model (``PIPELINE_MODEL_DIR``) and register it as a
    ``ModelVersion`` if it is new (the pipeline does the same on first use).

    Raises:
        ModelError: The directory is missing, incomplete or its checksum does not match.
    """
    return load_pipeline_model(actor=actor, correlation_id=correlation_id)[1]


__all__ = ["register_pipeline_model"]
