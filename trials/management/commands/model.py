"""``manage.py model``: model governance on the command line (README "Model governance").

    manage.py model register MODEL_DIR [--reason TEXT]
    manage.py model list [--trial CODE]
    manage.py model attach-report VERSION REPORT_DIR        # the output folder of bm-validate
    manage.py model validate VERSION --trial CODE           # on the trial's signed visits, here and now
    manage.py model approve VERSION --trial CODE --signer USERNAME --reason TEXT [--password-stdin]
    manage.py model activate VERSION --trial CODE --reason TEXT
    manage.py model retire VERSION [--trial CODE] --reason TEXT   # without --trial: in every trial
    manage.py model shadow VERSION --trial CODE --reason TEXT      # a candidate, for comparison only
    manage.py model stop-shadow VERSION --trial CODE --reason TEXT

VERSION is a model version's id or ``NAME:VERSION``. Approving is an e-signature: the signer (a trial
admin of the trial) enters their password at the prompt (or on standard input with ``--password-stdin``).
The other verbs are recorded as the system's.
"""

from __future__ import annotations

import getpass
import json
import sys
from pathlib import Path
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser

from segmentation.errors import ModelError
from trials.actions import governance
from trials.actions.jobs import run_job
from trials.choices import JobState
from trials.exceptions import ServiceError
from trials.models import ModelVersion, Trial, TrialModel


def _version(text: str) -> ModelVersion:
    if text.isdigit():
        found = ModelVersion.objects.filter(pk=int(text)).first()
    else:
        name, _, version = text.partition(":")
        found = ModelVersion.objects.filter(name=name, version=version).first()
    if found is None:
        raise CommandError(f"No model version {text!r} (give its id or NAME:VERSION; see `model list`).")
    return found


def _trial(code: str) -> Trial:
    found = Trial.objects.filter(code=code).first()
    if found is None:
        raise CommandError(f"No trial {code!r}.")
    return found


class Command(BaseCommand):
    help = "Register, validate (attach a report), approve, activate and retire segmentation models."

    def add_arguments(self, parser: CommandParser) -> None:
        verbs = parser.add_subparsers(dest="verb", required=True)
        register = verbs.add_parser("register", help="register a model directory")
        register.add_argument("model_dir")
        register.add_argument("--reason", default="registered on the command line")
        listing = verbs.add_parser("list", help="model versions, or one trial's models")
        listing.add_argument("--trial")
        attach = verbs.add_parser("attach-report", help="attach a bm-validate report: validated")
        attach.add_argument("version")
        attach.add_argument("report_dir", help="bm-validate's output folder (report.html, report.json)")
        validate = verbs.add_parser("validate", help="validate on a trial's signed visits (runs here)")
        validate.add_argument("version")
        validate.add_argument("--trial", required=True)
        approve = verbs.add_parser("approve", help="approve a validated version for a trial (signed)")
        approve.add_argument("version")
        approve.add_argument("--trial", required=True)
        approve.add_argument("--signer", required=True, help="username of a trial admin of the trial")
        approve.add_argument("--reason", required=True)
        approve.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
        activate = verbs.add_parser("activate", help="make an approved version the trial's active model")
        activate.add_argument("version")
        activate.add_argument("--trial", required=True)
        activate.add_argument("--reason", required=True)
        retire = verbs.add_parser("retire", help="retire a version in a trial, or everywhere")
        retire.add_argument("version")
        retire.add_argument("--trial")
        retire.add_argument("--reason", required=True)
        shadow = verbs.add_parser("shadow", help="run a version in shadow for a trial (not an approval)")
        stop = verbs.add_parser("stop-shadow", help="stop a trial's shadow candidate")
        for sub in (shadow, stop):
            sub.add_argument("version")
            sub.add_argument("--trial", required=True)
            sub.add_argument("--reason", required=True)

    def handle(self, *args: Any, verb: str, **options: Any) -> None:
        try:
            getattr(self, f"_{verb.replace('-', '_')}")(**options)
        except (ServiceError, ModelError) as exc:
            raise CommandError(getattr(exc, "message", None) or str(exc)) from exc

    def _register(self, *, model_dir: str, reason: str, **_: Any) -> None:
        version, created = governance.register_model(Path(model_dir), actor=None, reason=reason)
        self.stdout.write(f"{'Registered' if created else 'Already registered'}: {self._line(version)}")

    def _list(self, *, trial: str | None, **_: Any) -> None:
        if trial:
            for row in TrialModel.objects.filter(trial=_trial(trial)).select_related("model_version"):
                signed = (
                    f"approved by {row.approved_by_name or '-'} {row.approved_at:%Y-%m-%d %H:%M} UTC"
                    if row.approved_at is not None
                    else "not approved"
                )
                self.stdout.write(f"{row.status:9} {self._line(row.model_version)}; {signed}: {row.reason}")
            return
        for version in ModelVersion.objects.all():
            self.stdout.write(self._line(version))

    def _attach_report(self, *, version: str, report_dir: str, **_: Any) -> None:
        row = _version(version)
        folder = Path(report_dir)
        try:
            html = (folder / "report.html").read_bytes()
            report = json.loads((folder / "report.json").read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise CommandError(f"Cannot read the report in {folder}: {exc}") from exc
        model = report.get("model", {})
        if (model.get("weights_sha256"), model.get("config_sha256")) != (
            row.weights_sha256,
            row.config_sha256,
        ):
            raise CommandError(
                f"The report in {folder} is of another model (weights/config sha256 differ from {row})."
            )
        summary = {"aggregate": report.get("aggregate", {}), "data": report.get("data", {})}
        governance.attach_validation_report(row, report_html=html, summary=summary, actor=None)
        self.stdout.write(f"Validated: {self._line(row)}")

    def _validate(self, *, version: str, trial: str, **_: Any) -> None:
        row = _version(version)
        job = governance.start_validation(row, _trial(trial), actor=None, enqueue=False)
        run_job(job)
        job.refresh_from_db()
        if job.state != JobState.SUCCEEDED:
            raise CommandError(f"Validation failed: {job.error}")
        row.refresh_from_db()
        self.stdout.write(f"Validated on {job.result.get('cases')} signed visit(s): {self._line(row)}")

    def _approve(
        self, *, version: str, trial: str, signer: str, reason: str, password_stdin: bool, **_: Any
    ) -> None:
        user = get_user_model().objects.filter(username=signer).first()
        if user is None:
            raise CommandError(f"No user {signer!r}.")
        password = (
            sys.stdin.readline().rstrip("\n")
            if password_stdin
            else getpass.getpass(f"Password of {signer}: ")
        )
        row = governance.approve_model(
            _trial(trial), _version(version), actor=user, password=password, reason=reason
        )
        self.stdout.write(
            f"Approved for {trial} by {signer} (approved for use): {self._line(row.model_version)}"
        )

    def _activate(self, *, version: str, trial: str, reason: str, **_: Any) -> None:
        row = self._trial_model(version, trial)
        governance.activate_model(row, actor=None, reason=reason)
        self.stdout.write(f"Active in {trial}: {self._line(row.model_version)}")

    def _retire(self, *, version: str, trial: str | None, reason: str, **_: Any) -> None:
        if trial:
            row = self._trial_model(version, trial)
            governance.retire_trial_model(row, actor=None, reason=reason)
            self.stdout.write(f"Retired in {trial}: {self._line(row.model_version)}")
        else:
            retired = governance.retire_model_version(_version(version), actor=None, reason=reason)
            self.stdout.write(f"Retired everywhere: {self._line(retired)}")

    def _shadow(self, *, version: str, trial: str, reason: str, **_: Any) -> None:
        row = governance.start_shadow(_trial(trial), _version(version), actor=None, reason=reason)
        self.stdout.write(f"In shadow in {trial} (not approved): {self._line(row.model_version)}")

    def _stop_shadow(self, *, version: str, trial: str, reason: str, **_: Any) -> None:
        row = self._trial_model(version, trial)
        governance.stop_shadow(row, actor=None, reason=reason)
        self.stdout.write(f"Shadow stopped in {trial}: {self._line(row.model_version)}")

    @staticmethod
    def _trial_model(version: str, trial: str) -> TrialModel:
        row = TrialModel.objects.filter(trial=_trial(trial), model_version=_version(version)).first()
        if row is None:
            raise CommandError(f"{version} is not approved (nor in shadow) for {trial}: approve it first.")
        return row

    @staticmethod
    def _line(version: ModelVersion) -> str:
        flag = " [demo — not for clinical use]" if version.is_demo else ""
        return (
            f"#{version.pk} {version.name}:{version.version} {version.lifecycle}{flag} "
            f"weights {version.weights_sha256[:12]} config {version.config_sha256[:12]}"
        )
