"""``manage.py training_set``: learning from the readers on the command line (README "Learning from the
readers").

    manage.py training_set export --trial CODE [--hold-out SUBJECT ...] [--hold-out-fraction F]
    manage.py training_set list [--trial CODE]
    manage.py training_set fine-tune ID [--method paper|full] [--epochs N] [--steps-per-epoch N]
        [--batch-size N] [--seed N] [--queue]

``export`` writes the trial's signed visits under MEDIA_ROOT in the layout ``bm-train --data`` reads (and
prints the folder); ``fine-tune`` runs the fine-tuning job here and now (with ``--queue``: hands it to the
gpu workers) and registers the model as a new version, to be validated and approved before use. Recorded
as the system's actions.
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from segmentation.errors import ModelError
from trials.actions import training
from trials.actions.jobs import run_job
from trials.choices import JobState
from trials.exceptions import ServiceError
from trials.models import TrainingSet, Trial
from trials.storage import media_path


def _trial(code: str) -> Trial:
    found = Trial.objects.filter(code=code).first()
    if found is None:
        raise CommandError(f"No trial with code {code!r}.")
    return found


class Command(BaseCommand):
    help = "Export a trial's signed reads as a training set, list training sets, fine-tune from one."

    def add_arguments(self, parser: CommandParser) -> None:
        verbs = parser.add_subparsers(dest="verb", required=True)
        export = verbs.add_parser("export", help="export the trial's signed visits as a training set")
        export.add_argument("--trial", required=True)
        export.add_argument(
            "--hold-out", nargs="*", default=[], metavar="SUBJECT", help="subject ids to hold out"
        )
        export.add_argument(
            "--hold-out-fraction", type=float, default=0.0, help="also hold out this share (deterministic)"
        )
        listing = verbs.add_parser("list", help="training sets, newest first")
        listing.add_argument("--trial")
        tune = verbs.add_parser("fine-tune", help="fine-tune from the trial's active model on a training set")
        tune.add_argument("training_set", type=int)
        tune.add_argument("--method", choices=training.METHODS, default=training.PAPER)
        tune.add_argument("--epochs", type=int, default=20)
        tune.add_argument("--steps-per-epoch", type=int, default=50)
        tune.add_argument("--batch-size", type=int, default=2)
        tune.add_argument("--seed", type=int, default=0)
        tune.add_argument("--queue", action="store_true", help="hand the job to the gpu workers")

    def handle(self, *args: Any, verb: str, **options: Any) -> None:
        try:
            getattr(self, f"_{verb.replace('-', '_')}")(**options)
        except (ServiceError, ModelError) as exc:
            raise CommandError(getattr(exc, "message", None) or str(exc)) from exc

    def _export(self, *, trial: str, hold_out: list[str], hold_out_fraction: float, **_: Any) -> None:
        row = training.export_training_set(
            _trial(trial), actor=None, hold_out=hold_out, hold_out_fraction=hold_out_fraction
        )
        self.stdout.write(
            f"Training set {row.pk}: {row.n_cases} case(s) of {len(row.training_patients)} patient(s), "
            f"{len(row.held_out_patients)} held out, in {media_path(row.directory)} "
            f"(manifest sha256 {row.manifest_sha256})"
        )

    def _list(self, *, trial: str | None, **_: Any) -> None:
        rows = TrainingSet.objects.select_related("trial")
        if trial:
            rows = rows.filter(trial=_trial(trial))
        for row in rows:
            self.stdout.write(
                f"#{row.pk} {row.trial.code} {row.created_at:%Y-%m-%d %H:%M} UTC: {row.n_cases} case(s), "
                f"{len(row.training_patients)} training / {len(row.held_out_patients)} held-out patient(s)"
            )

    def _fine_tune(self, *, training_set: int, queue: bool, **options: Any) -> None:
        row = TrainingSet.objects.select_related("trial").filter(pk=training_set).first()
        if row is None:
            raise CommandError(f"No training set {training_set}.")
        counts = {k: options[k] for k in ("method", "epochs", "steps_per_epoch", "batch_size", "seed")}
        job = training.start_fine_tuning(row, actor=None, enqueue=queue, **counts)
        if queue:
            self.stdout.write(f"Fine-tuning queued: job {job.pk}")
            return
        run_job(job)
        job.refresh_from_db()
        if job.state != JobState.SUCCEEDED:
            raise CommandError(f"Fine-tuning failed: {job.error}")
        self.stdout.write(
            f"Registered {job.result['model_version']} (#{job.result['model_version_id']}): "
            "validate it and approve it for the trial before use"
        )
