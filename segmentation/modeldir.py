"""A model directory as files, and how a model names itself in what it produces.

The names of its files (``config.json``, ``weights.pt``, ``model.onnx``), where the shipped demo model lives, and the
strings that identify a model in its results (DICOM Algorithm Version, RTSTRUCT descriptions, reports).
Kept apart from :mod:`segmentation.model` so that the web processes (writing results, checking a model
directory for readiness) never import the network code (torch, MONAI).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "weights.pt"
#: The ONNX export of the weights, for the CPU backend (:mod:`segmentation.onnx_backend`).
ONNX_NAME = "model.onnx"
#: The shipped demo model (inside the package, so it installs with it).
DEMO_MODEL_DIR = Path(__file__).parent / "models" / "demo-unetr"
DEMO_LABEL = "demo — not for clinical use"


#: Keys of a model's configuration left out of its identity: the ONNX export is a derived file whose own
#: checksum is verified against the weights on load, so exporting does not make a new model version.
IDENTITY_EXCLUDED_KEYS = frozenset({"onnx_export"})


def config_sha256(config: Mapping[str, Any]) -> str:
    """Checksum of a model configuration (the parsed ``config.json``, or ``ModelConfig.to_dict()``).

    Canonical JSON (sorted keys, no whitespace), so a re-formatted file keeps its checksum while any
    change of a value (a threshold, the spacing, the intended use) gives a new one. Together with the
    weights' sha256 it is the identity of a model version.
    """
    kept = {key: value for key, value in config.items() if key not in IDENTITY_EXCLUDED_KEYS}
    text = json.dumps(kept, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def algorithm_version(version: str, weights_sha256: str) -> str:
    """Model version and short weights checksum, for DICOM Algorithm Version (LO, 64 characters)."""
    return f"{version} sha256:{weights_sha256[:16]}"[:64]


def provenance(name: str, version: str, weights_sha256: str, label: str = "") -> str:
    """One line naming what produced a result: name, version, full weights checksum, label."""
    text = f"{name} {version}, weights sha256 {weights_sha256}"
    return f"{text}; {label}" if label else text


__all__ = [
    "CONFIG_NAME",
    "DEMO_LABEL",
    "DEMO_MODEL_DIR",
    "IDENTITY_EXCLUDED_KEYS",
    "ONNX_NAME",
    "WEIGHTS_NAME",
    "algorithm_version",
    "config_sha256",
    "provenance",
]
