"""A model directory as files, and how a model names itself in what it produces.

The names of its files (``config.json``, ``weights.pt``, ``model.onnx``), where the shipped demo model lives, and the
strings that identify a model in its results (DICOM Algorithm Version, RTSTRUCT descriptions, reports).
Kept apart from :mod:`segmentation.model` so that the web processes (writing results, checking a model
directory for readiness) never import the network code (torch, MONAI).
"""

from __future__ import annotations

from pathlib import Path

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "weights.pt"
#: The ONNX export of the weights, for the CPU backend (:mod:`segmentation.onnx_backend`).
ONNX_NAME = "model.onnx"
#: The shipped demo model (inside the package, so it installs with it).
DEMO_MODEL_DIR = Path(__file__).parent / "models" / "demo-unetr"
DEMO_LABEL = "demo — not for clinical use"


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
    "ONNX_NAME",
    "WEIGHTS_NAME",
    "algorithm_version",
    "provenance",
]
