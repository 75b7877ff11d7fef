"""Actions of learning from the readers (README "Learning from the readers"): export a trial's signed reads
as a training set, and start a fine-tuning job from one.

Both are for trial admins of the trial (None is the system: management commands). The export writes its
files (:mod:`trials.pipeline.training_sets`) before its transaction, which saves the ``TrainingSet`` row
with its audit event; files of a failed export are removed. The fine-tuning job (queue ``gpu``,
:mod:`trials.pipeline.training`) registers its model as a new version that must be validated and
approved like any other. No torch here: the web processes call these actions.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterable
from typing import Any

from django.db import transaction
from django.utils import timezone

from trials.actions.governance import require_trial_admin
from trials.audit import record_audit_event
from trials.choices import ModelLifecycle, TrialModelStatus
from trials.exceptions import InvalidInputError, InvalidStateError
from trials.models import ModelVersion, Patient, ProcessingJob, TrainingSet, Trial, TrialModel
from trials.pipeline.queue import create_training_job
from trials.pipeline.references import signed_visits
from trials.pipeline.registry import configured_model_dir
from trials.pipeline.training_sets import held_out_by_fraction, sanitise, write_training_set
from trials.records.imaging import register_model_directory
from trials.storage import media_path

#: Audit action of an export (the fine-tuning job is audited as a job, and its model as registered).
EXPORT = "training_set_export"

#: Fine-tuning methods: the paper's (the active model's weights, encoder frozen, BCE) or full training.
PAPER = "paper"
FULL = "full"
METHODS = (PAPER, FULL)


#: What a trial admin may do here, as the refusal of anyone else says it.
DOING = "export training sets and fine-tune its models"


def export_training_set(
    trial: Trial,
    *,
    actor: Any | None,
    hold_out: Iterable[str] = (),
    hold_out_fraction: float = 0.0,
    correlation_id: str = "",
) -> TrainingSet:
    """Export the trial's signed visits as a training set, the held-out patients left out.

    Args:
        hold_out: subject ids to hold out (the patients of a validation set).
        hold_out_fraction: also hold out this share of the patients, chosen by a deterministic rule
            (:func:`~trials.pipeline.training_sets.held_out_by_fraction`).

    Raises:
        SignatureError: not a trial admin. InvalidStateError: no signed visit.
        InvalidInputError: an unknown subject id, a fraction outside [0, 1), or every patient held out.
        MissingImageError: a signed lesion without a stored contour.
    """
    require_trial_admin(actor, trial, DOING)
    requested = {str(s).strip() for s in hold_out if str(s).strip()}
    known = set(Patient.objects.filter(trial=trial).values_list("subject_id", flat=True))
    unknown = sorted(requested - known)
    if unknown:
        raise InvalidInputError(
            f"No patient {', '.join(unknown)} in {trial.code}.", {"hold_out": ["Unknown subject id."]}
        )
    visits = signed_visits(trial)
    if not visits:
        raise InvalidStateError(f"Trial {trial.code} has no visit signed by a radiologist to export.")
    subjects = {visit.patient.subject_id for visit in visits}
    held_out = requested | held_out_by_fraction(trial.code, subjects, hold_out_fraction)
    if subjects <= held_out:
        raise InvalidInputError(
            "Every patient with a signed visit is held out: nothing is left to train on.",
            {"hold_out": ["Hold out fewer patients."]},
        )
    folder = f"training-sets/{sanitise(trial.code)}-{uuid.uuid4().hex[:12]}"
    created = timezone.now()
    rule = {
        "subjects": sorted(requested),
        "fraction": hold_out_fraction,
        "fraction_rule": "sha256('<trial code>:<subject id>'), first 8 bytes / 2**64 < fraction",
    }
    name = actor.get_username() if actor is not None else "system"
    try:
        manifest, digest = write_training_set(
            trial, visits, folder, held_out=held_out, hold_out_rule=rule, created_by=name, created=created
        )
        with transaction.atomic():
            row = TrainingSet.objects.create(
                trial=trial,
                directory=folder,
                manifest=manifest,
                manifest_sha256=digest,
                n_cases=len(manifest["cases"]),
                training_patients=manifest["training_patients"],
                held_out_patients=manifest["held_out_patients"],
                created_by=actor,
                created_by_name=name,
            )
            record_audit_event(
                actor=actor,
                action=EXPORT,
                obj=row,
                after={
                    "training_set": row.pk,
                    "manifest_sha256": digest,
                    "cases": row.n_cases,
                    "training_patients": len(row.training_patients),
                    "held_out_patients": len(row.held_out_patients),
                },
                reason="signed reads exported as a training set",
                correlation_id=correlation_id,
            )
    except BaseException:
        shutil.rmtree(media_path(folder), ignore_errors=True)
        raise
    return row


def base_model(trial: Trial) -> ModelVersion:
    """The version a fine-tuning starts from: the trial's active model, or in a demo trial without one
    the configured demo model.

    Raises:
        InvalidStateError: no active model (not a demo trial), or the active version is retired.
    """
    active = (
        TrialModel.objects.filter(trial=trial, status=TrialModelStatus.ACTIVE)
        .select_related("model_version")
        .first()
    )
    if active is not None:
        if active.model_version.lifecycle == ModelLifecycle.RETIRED:
            raise InvalidStateError(f"The active model of {trial.code} is retired.")
        return active.model_version
    if trial.is_demo:
        version, _ = register_model_directory(
            configured_model_dir(), actor=None, reason="base of a fine-tuning"
        )
        return version
    raise InvalidStateError(
        f"Trial {trial.code} has no active model to fine-tune from: approve and activate one first."
    )


@transaction.atomic
def start_fine_tuning(
    training_set: TrainingSet,
    *,
    actor: Any | None,
    method: str = PAPER,
    epochs: int = 20,
    steps_per_epoch: int = 50,
    batch_size: int = 2,
    seed: int = 0,
    enqueue: bool = True,
    correlation_id: str = "",
) -> ProcessingJob:
    """Queue a fine-tuning job (queue ``gpu``) on a training set, from the trial's active model.

    ``method`` ``paper``: the active model's weights, encoder frozen, BCE (Dessoude et al.); ``full``: the
    active model's architecture trained from scratch (BCE). The result is registered as a new version
    (lifecycle registered, approved for no trial).

    Raises:
        SignatureError: not a trial admin. InvalidInputError: unknown method, or counts below 1.
        InvalidStateError: no model to start from.
    """
    trial = training_set.trial
    require_trial_admin(actor, trial, DOING)
    if method not in METHODS:
        raise InvalidInputError(f"Unknown method {method!r}.", {"method": [f"One of {', '.join(METHODS)}."]})
    for field, value in (
        ("epochs", epochs),
        ("steps_per_epoch", steps_per_epoch),
        ("batch_size", batch_size),
    ):
        if value < 1:
            raise InvalidInputError(f"{field} must be at least 1.", {field: ["Must be >= 1."]})
    base = base_model(trial)
    params = {
        "training_set_id": training_set.pk,
        "base_version_id": base.pk,
        "method": method,
        "epochs": epochs,
        "steps_per_epoch": steps_per_epoch,
        "batch_size": batch_size,
        "seed": seed,
    }
    return create_training_job(
        training_set, params, enqueue=enqueue, actor=actor, correlation_id=correlation_id
    )


__all__ = ["EXPORT", "FULL", "METHODS", "PAPER", "base_model", "export_training_set", "start_fine_tuning"]
