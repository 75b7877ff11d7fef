"""How a model names itself in what it produces (DICOM Algorithm Version, RTSTRUCT descriptions, reports).

Plain strings from the model's name, version and weights checksum, kept apart from
:mod:`segmentation.model` so that writing a result does not import the network (torch, MONAI).
"""

from __future__ import annotations


def algorithm_version(version: str, weights_sha256: str) -> str:
    """Model version and short weights checksum, for DICOM Algorithm Version (LO, 64 characters)."""
    return f"{version} sha256:{weights_sha256[:16]}"[:64]


def provenance(name: str, version: str, weights_sha256: str, label: str = "") -> str:
    """One line naming what produced a result: name, version, full weights checksum, label."""
    text = f"{name} {version}, weights sha256 {weights_sha256}"
    return f"{text}; {label}" if label else text


__all__ = ["algorithm_version", "provenance"]
