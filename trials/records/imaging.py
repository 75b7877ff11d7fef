"""Row helpers of imaging: series, model versions and segmentation runs (validated, saved, audited).

Written by the pipeline (``trials.pipeline``) and the upload action; no consequences beyond the row.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from django.core.files.base import ContentFile
from django.db import transaction
from django.utils import timezone

from segmentation.descriptors import clean_series_description
from segmentation.errors import ModelError
from segmentation.io import sha256_file
from segmentation.model import read_config
from segmentation.modeldir import WEIGHTS_NAME, config_sha256
from trials.audit import record_audit_event, snapshot
from trials.choices import ModelLifecycle
from trials.exceptions import DuplicateError, InvalidStateError
from trials.models import ImagingSeries, ModelVersion, SegmentationRun, Timepoint
from trials.records.base import check_fields, create_row, update_row

SERIES_FIELDS = (
    "study_instance_uid",
    "modality",
    "series_description",
    "size_voxels",
    "spacing_mm",
    "origin_mm",
    "direction",
    "volume_file",
    "checksum_sha256",
    "source",
    "uploaded_by",
    "registration",
)


@transaction.atomic
def register_series(
    timepoint: Timepoint,
    *,
    series_instance_uid: str,
    actor: Any | None,
    reason: str = "",
    correlation_id: str = "",
    **fields: Any,
) -> ImagingSeries:
    """Record an imaging series of a visit (the caller has stored the volume).

    Args:
        timepoint: the visit.
        series_instance_uid: DICOM (0020,000E); unique across the database.
        **fields: any of ``SERIES_FIELDS``; ``series_description`` is cleaned of everything but MR terms
            (``segmentation.descriptors``) whoever calls, so no row or audit event ever holds the raw text.

    Raises:
        DuplicateError: the Series Instance UID is already registered.
    """
    check_fields(ImagingSeries, fields, SERIES_FIELDS)
    if "series_description" in fields:
        fields["series_description"] = clean_series_description(fields["series_description"])
    return create_row(
        ImagingSeries,
        actor=actor,
        reason=reason,
        correlation_id=correlation_id,
        timepoint=timepoint,
        series_instance_uid=series_instance_uid,
        **fields,
    )


@transaction.atomic
def update_series(
    series: ImagingSeries, *, actor: Any | None, reason: str = "", correlation_id: str = "", **changes: Any
) -> ImagingSeries:
    """Change a series' stored volume, geometry or description (never its UID)."""
    return update_row(
        series, changes, allowed=SERIES_FIELDS, actor=actor, reason=reason, correlation_id=correlation_id
    )


MODEL_VERSION_FIELDS = (
    "config",
    "weights_path",
    "training_provenance",
    "validation_metrics",
    "intended_use",
    "is_demo",
    "is_active",
    "config_sha256",
)


@transaction.atomic
def register_model_version(
    *,
    name: str,
    version: str,
    architecture: str,
    weights_sha256: str,
    actor: Any | None,
    reason: str = "",
    correlation_id: str = "",
    **fields: Any,
) -> ModelVersion:
    """Register segmentation weights. Raises DuplicateError when the sha256 or name+version exist."""
    check_fields(ModelVersion, fields, MODEL_VERSION_FIELDS)
    fields.setdefault("config_sha256", config_sha256(fields.get("config") or {}))
    return create_row(
        ModelVersion,
        actor=actor,
        reason=reason,
        correlation_id=correlation_id,
        name=name,
        version=version,
        architecture=architecture,
        weights_sha256=weights_sha256,
        **fields,
    )


def model_identity(directory: str | Path) -> dict[str, Any]:
    """Read a model directory's configuration and check its weights: name, version, both checksums.

    Raises:
        ModelError: missing or invalid config, missing weights, or weights whose sha256 is not the
            config's (the directory was changed after it was written).
    """
    directory = Path(directory)
    cfg = read_config(directory)
    weights = directory / WEIGHTS_NAME
    if not weights.is_file():
        raise ModelError(f"no {WEIGHTS_NAME} in model directory {directory}")
    actual = sha256_file(weights)
    if actual != cfg.weights_sha256:
        raise ModelError(f"{weights}: sha256 {actual} is not the config's {cfg.weights_sha256}")
    config = cfg.to_dict()
    return {
        "config": cfg,
        "config_dict": config,
        "weights_sha256": cfg.weights_sha256,
        "config_sha256": config_sha256(config),
    }


def find_version(directory: str | Path) -> ModelVersion | None:
    """The registered version of a model directory (same weights and configuration), or None."""
    ident = model_identity(directory)
    return ModelVersion.objects.filter(
        weights_sha256=ident["weights_sha256"], config_sha256=ident["config_sha256"]
    ).first()


def training_provenance(extra: dict[str, Any]) -> dict[str, Any]:
    """A model's training provenance from its config: bm-train's ``training`` section and, for a version
    fine-tuned by MetTrack, its ``training_set`` (set, manifest sha256, method, base, patients)."""
    out = dict(extra.get("training", {}))
    if extra.get("training_set"):
        out["training_set"] = dict(extra["training_set"])
    return out


def register_model_directory(
    directory: str | Path, *, actor: Any | None, reason: str = "", correlation_id: str = ""
) -> tuple[ModelVersion, bool]:
    """Register a model directory as a ``ModelVersion`` (lifecycle ``registered``); idempotent.

    Its identity is its weights and configuration checksums: an edited config is a new version (its
    version string gets the config checksum appended when the name and version are taken).

    Returns:
        The version and whether it was created now.

    Raises:
        ModelError: the directory is unusable (see :func:`model_identity`).
    """
    directory = Path(directory).resolve()
    ident = model_identity(directory)
    cfg = ident["config"]
    lookup = {"weights_sha256": ident["weights_sha256"], "config_sha256": ident["config_sha256"]}
    existing = ModelVersion.objects.filter(**lookup).first()
    if existing is not None:
        return existing, False
    version = cfg.version
    if ModelVersion.objects.filter(name=cfg.name, version=version).exists():
        version = f"{cfg.version}+{ident['config_sha256'][:8]}"[:32]
    try:
        with transaction.atomic():
            row = register_model_version(
                name=cfg.name,
                version=version,
                architecture="MONAI UNETR",
                config=ident["config_dict"],
                weights_path=str(directory),
                training_provenance=training_provenance(cfg.extra),
                validation_metrics=dict(cfg.extra.get("metrics", {})),
                intended_use=cfg.intended_use,
                is_demo="demo" in cfg.name.lower() or "not for clinical use" in cfg.label.lower(),
                actor=actor,
                reason=reason or "model registered",
                correlation_id=correlation_id,
                **lookup,
            )
    except DuplicateError:  # registered by another process at the same moment
        return ModelVersion.objects.get(**lookup), False
    return row, True


@transaction.atomic
def store_validation_report(
    version: ModelVersion,
    *,
    report_html: bytes,
    summary: dict[str, Any],
    actor: Any | None,
    correlation_id: str = "",
) -> ModelVersion:
    """Store a validation report with a model version and move it to ``validated`` (a newer report
    replaces the file; the audit event of each keeps its summary).

    Raises:
        InvalidStateError: the version is retired.
    """
    version = ModelVersion.objects.select_for_update().get(pk=version.pk)
    if version.lifecycle == ModelLifecycle.RETIRED:
        raise InvalidStateError(f"{version} is retired: it cannot be validated again.")
    fields = ["lifecycle", "validation_report", "validated_at"]
    before = snapshot(version, fields)
    version.validation_report.save(
        re.sub(r"[^A-Za-z0-9_.-]", "_", f"validation-{version.name}-{version.version}.html"),
        ContentFile(report_html),
        save=False,
    )
    version.validation_summary = summary
    version.lifecycle = ModelLifecycle.VALIDATED
    version.validated_at = timezone.now()
    version.save(update_fields=["validation_report", "validation_summary", "lifecycle", "validated_at"])
    record_audit_event(
        actor=actor,
        action="model_validate",
        obj=version,
        before=before,
        after={**snapshot(version, fields), "summary": summary},
        reason="validation report attached",
        correlation_id=correlation_id,
    )
    return version


SEGMENTATION_RUN_FIELDS = (
    "device",
    "status",
    "timings_s",
    "started_at",
    "finished_at",
    "mask_file",
    "rtstruct_file",
    "seg_file",
    "error",
    "is_shadow",
    "lesion_table",
    "findings",
)


@transaction.atomic
def create_segmentation_run(
    series: ImagingSeries,
    model_version: ModelVersion,
    *,
    actor: Any | None,
    reason: str = "",
    correlation_id: str = "",
    **fields: Any,
) -> SegmentationRun:
    """Start recording a segmentation of a series by a model.

    Raises:
        DuplicateError: this series was already segmented with the same weights (sha256).
    """
    check_fields(SegmentationRun, fields, SEGMENTATION_RUN_FIELDS)
    return create_row(
        SegmentationRun,
        actor=actor,
        reason=reason,
        correlation_id=correlation_id,
        series=series,
        model_version=model_version,
        model_weights_sha256=model_version.weights_sha256,
        **fields,
    )


@transaction.atomic
def update_segmentation_run(
    run: SegmentationRun, *, actor: Any | None, reason: str = "", correlation_id: str = "", **changes: Any
) -> SegmentationRun:
    """Record a run's status, outputs, timings or error."""
    return update_row(
        run,
        changes,
        allowed=SEGMENTATION_RUN_FIELDS,
        actor=actor,
        reason=reason,
        correlation_id=correlation_id,
    )


__all__ = [
    "MODEL_VERSION_FIELDS",
    "SEGMENTATION_RUN_FIELDS",
    "SERIES_FIELDS",
    "create_segmentation_run",
    "register_model_version",
    "register_series",
    "update_segmentation_run",
    "update_series",
]
