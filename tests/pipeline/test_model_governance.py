"""Model governance: identity (weights + config), lifecycle, per-trial approval (e-signature), the
pipeline's refusal of a model not approved for the trial, the API, the admin and ``manage.py model``."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import SimpleITK as sitk
from django.core.management import CommandError, call_command
from django.db import IntegrityError, transaction

from segmentation.modeldir import config_sha256
from tests.factories import DEFAULT_PASSWORD, make_member, make_model_version, make_trial
from tests.pipeline.conftest import SyntheticPatient
from trials.actions import governance, imaging
from trials.choices import JobState, MembershipRole, ModelLifecycle, SignatureMeaning, TrialModelStatus
from trials.exceptions import DuplicateError, InvalidStateError, SignatureError
from trials.models import AuditEvent, ProcessingJob, SegmentationRun, TrialModel
from trials.pipeline.embedded import run_job_inline


@pytest.fixture
def model_copy(tmp_path: Path, tiny_model_dir: Path) -> Path:
    """A private copy of the tiny model directory (a test edits its config)."""
    return Path(shutil.copytree(tiny_model_dir, tmp_path / "model"))


def _edit_config(directory: Path, **postprocessing: Any) -> None:
    path = directory / "config.json"
    data = json.loads(path.read_text())
    data["postprocessing"].update(postprocessing)
    path.write_text(json.dumps(data, indent=1))


def _validated(directory: Path) -> Any:
    version, _ = governance.register_model(directory, actor=None)
    return governance.attach_validation_report(
        version, report_html=b"<html>report</html>", summary={"dice": 0.8}, actor=None
    )


@pytest.mark.django_db
def test_identity_covers_the_config_and_registering_is_idempotent(model_copy: Path) -> None:
    first, created = governance.register_model(model_copy, actor=None)
    assert created and first.lifecycle == ModelLifecycle.REGISTERED
    assert first.config_sha256 == config_sha256(json.loads((model_copy / "config.json").read_text()))
    # Re-formatting the file keeps the identity; registering again finds the same row.
    data = json.loads((model_copy / "config.json").read_text())
    (model_copy / "config.json").write_text(json.dumps(data, indent=4, sort_keys=True))
    again, created = governance.register_model(model_copy, actor=None)
    assert not created and again.pk == first.pk
    # A changed threshold with the same weights is a new version (same name, version suffixed).
    _edit_config(model_copy, threshold=0.3)
    edited, created = governance.register_model(model_copy, actor=None)
    assert created and edited.pk != first.pk
    assert edited.weights_sha256 == first.weights_sha256 and edited.config_sha256 != first.config_sha256
    assert edited.version.startswith(first.version + "+")
    # The database keeps the identity unique.
    with pytest.raises(IntegrityError), transaction.atomic():
        type(first).objects.create(
            name="other",
            version="9",
            architecture="x",
            weights_sha256=first.weights_sha256,
            config_sha256=first.config_sha256,
        )


@pytest.mark.django_db
def test_lifecycle_approval_is_a_signed_trial_admin_decision() -> None:
    trial = make_trial(is_demo=False)
    admin = make_member(trial, MembershipRole.ADMIN)
    radiologist = make_member(trial, MembershipRole.RADIOLOGIST)
    version = make_model_version()
    approve = dict(actor=admin, password=DEFAULT_PASSWORD, reason="site validation 2026-11 reviewed")

    with pytest.raises(InvalidStateError, match="no validation report"):
        governance.approve_model(trial, version, **approve)
    governance.attach_validation_report(version, report_html=b"<html/>", summary={"n": 3}, actor=None)
    version.refresh_from_db()
    assert version.lifecycle == ModelLifecycle.VALIDATED and version.validation_report.name
    with pytest.raises(SignatureError, match="trial admin"):
        governance.approve_model(trial, version, **{**approve, "actor": radiologist})
    with pytest.raises(SignatureError, match="password does not match"):
        governance.approve_model(trial, version, **{**approve, "password": "wrong"})
    assert AuditEvent.objects.filter(
        action="signature_failed", after__object_type="trials.modelversion", after__object_id=str(version.pk)
    ).exists()
    with pytest.raises(Exception, match="reason"):
        governance.approve_model(trial, version, **{**approve, "reason": " "})
    assert not TrialModel.objects.exists()

    row = governance.approve_model(trial, version, **approve)
    assert row.status == TrialModelStatus.APPROVED and row.approved_by == admin and row.approved_at
    assert row.signature_meaning == SignatureMeaning.APPROVED_FOR_USE
    event = AuditEvent.objects.get(action=governance.APPROVE)
    assert event.trial_id == trial.pk and event.actor_id == admin.pk and event.reason == approve["reason"]
    with pytest.raises(DuplicateError):
        governance.approve_model(trial, version, **approve)

    # Activation: one active model per trial, the previous one goes back to approved.
    governance.activate_model(row, actor=admin, reason="go live")
    other = make_model_version()
    governance.attach_validation_report(other, report_html=b"<html/>", summary={}, actor=None)
    second = governance.approve_model(trial, other, **approve)
    governance.activate_model(second, actor=admin, reason="better model")
    row.refresh_from_db()
    second.refresh_from_db()
    assert (row.status, second.status) == (TrialModelStatus.APPROVED, TrialModelStatus.ACTIVE)
    with pytest.raises(IntegrityError), transaction.atomic():
        TrialModel.objects.filter(pk=row.pk).update(status=TrialModelStatus.ACTIVE)
    governance.retire_trial_model(second, actor=admin, reason="withdrawn")
    with pytest.raises(InvalidStateError, match="retired"):
        governance.activate_model(second, actor=admin, reason="again")
    assert AuditEvent.objects.filter(action=governance.ACTIVATE).count() == 3  # 2 activations + 1 demotion
    assert AuditEvent.objects.filter(action=governance.RETIRE).count() == 1


@pytest.mark.django_db
def test_pipeline_runs_only_the_trials_approved_active_model(
    synthetic_patient: SyntheticPatient,
    model_copy: Path,
    media_root: Path,
    settings: Any,
    django_capture_on_commit_callbacks: Any,
) -> None:
    from tests.factories import make_patient, make_timepoint

    settings.CELERY_EMBEDDED = True
    settings.PIPELINE_EMBEDDED_SYNC = True
    settings.PIPELINE_MODEL_DIR = str(model_copy)  # a demo-labelled model, but the trial is not a demo
    trial = make_trial(is_demo=False)
    admin = make_member(trial, MembershipRole.ADMIN)
    visit = make_timepoint(make_patient(trial), visit_label="BASELINE", is_baseline=True)

    upload = imaging.upload_series(visit, synthetic_patient.zips[0], enqueue=False, actor=None)
    run_job_inline(upload.job.pk)
    job = ProcessingJob.objects.get(pk=upload.job.pk)
    assert job.state == JobState.FAILED and "no active segmentation model" in job.error
    assert trial.code in job.error and not SegmentationRun.objects.exists()

    version = _validated(model_copy)
    row = governance.approve_model(
        trial, version, actor=admin, password=DEFAULT_PASSWORD, reason="validated on site data"
    )
    governance.activate_model(row, actor=admin, reason="go live")
    from trials.actions import jobs

    with django_capture_on_commit_callbacks(execute=True):
        jobs.retry_job(job, actor=None, reason="model approved")
    job.refresh_from_db()
    assert job.state == JobState.SUCCEEDED, job.error
    assert SegmentationRun.objects.get().model_version == version

    # The approved directory edited afterwards (a threshold): refused, saying why.
    _edit_config(model_copy, threshold=0.2)
    second = make_timepoint(visit.patient, visit_label="FU1")
    upload = imaging.upload_series(second, synthetic_patient.zips[1], enqueue=False, actor=None)
    run_job_inline(upload.job.pk)
    job = ProcessingJob.objects.get(pk=upload.job.pk)
    assert (
        job.state == JobState.FAILED and "no longer holds the approved weights and configuration" in job.error
    )


@pytest.mark.django_db
def test_api_lists_approves_activates_and_the_schema_stays_valid(api_client: Any) -> None:
    trial = make_trial(is_demo=False)
    admin = make_member(trial, MembershipRole.ADMIN)
    investigator = make_member(trial, MembershipRole.INVESTIGATOR)
    version = make_model_version(is_demo=True)
    governance.attach_validation_report(version, report_html=b"<html>r</html>", summary={}, actor=None)

    api_client.force_authenticate(investigator)
    body = {"trial": trial.pk, "model_version": version.pk, "password": DEFAULT_PASSWORD, "reason": "ok"}
    assert api_client.post("/api/v1/trial-models/approve/", body, format="json").status_code == 403
    api_client.force_authenticate(admin)
    bad = api_client.post("/api/v1/trial-models/approve/", {**body, "password": "x"}, format="json")
    assert bad.status_code == 400 and "password" in bad.json()
    made = api_client.post("/api/v1/trial-models/approve/", body, format="json")
    assert made.status_code == 201, made.content
    assert made.json()["status"] == "approved" and made.json()["not_for_clinical_use"] is True
    pk = made.json()["id"]
    api_client.force_authenticate(investigator)
    assert api_client.post(f"/api/v1/trial-models/{pk}/activate/", {"reason": "r"}).status_code == 403
    api_client.force_authenticate(admin)
    active = api_client.post(f"/api/v1/trial-models/{pk}/activate/", {"reason": "go"}, format="json")
    assert active.status_code == 200 and active.json()["status"] == "active"
    listed = api_client.get(f"/api/v1/trial-models/?trial={trial.pk}&status=active").json()
    assert [item["id"] for item in listed["results"]] == [pk]
    detail = api_client.get(f"/api/v1/model-versions/{version.pk}/").json()
    assert detail["lifecycle"] == "validated" and detail["config_sha256"] == version.config_sha256
    report = api_client.get(detail["validation_report_url"])
    assert report.status_code == 200 and b"".join(report.streaming_content) == b"<html>r</html>"
    # Retiring needs a reason, then the row is retired in this trial.
    assert api_client.post(f"/api/v1/trial-models/{pk}/retire/", {}, format="json").status_code == 400
    retired = api_client.post(f"/api/v1/trial-models/{pk}/retire/", {"reason": "superseded"}, format="json")
    assert retired.status_code == 200 and retired.json()["status"] == "retired"

    # Another trial's approvals are invisible (404), and the OpenAPI schema builds with the new routes.
    outsider = make_member(make_trial(), MembershipRole.ADMIN)
    api_client.force_authenticate(outsider)
    assert api_client.get(f"/api/v1/trial-models/{pk}/").status_code == 404
    schema = api_client.get("/api/schema/?format=json")
    assert schema.status_code == 200
    paths = schema.json()["paths"]
    assert "/api/v1/trial-models/approve/" in paths and "/api/v1/model-versions/{id}/report/" in paths


@pytest.mark.django_db
def test_admin_shows_models_and_trial_approvals(client: Any) -> None:
    from tests.factories import make_superuser

    trial = make_trial(is_demo=False)
    admin = make_member(trial, MembershipRole.ADMIN)
    version = make_model_version(is_demo=True)
    governance.attach_validation_report(version, report_html=b"<html/>", summary={}, actor=None)
    governance.approve_model(trial, version, actor=admin, password=DEFAULT_PASSWORD, reason="pilot")
    client.force_login(make_superuser())
    page = client.get("/admin/trials/trialmodel/")
    assert page.status_code == 200 and trial.code in page.content.decode()
    page = client.get("/admin/trials/modelversion/")
    assert page.status_code == 200 and "validated" in page.content.decode().lower()


@pytest.mark.django_db
def test_model_command_registers_approves_activates_and_retires(
    model_copy: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    trial = make_trial(is_demo=False)
    admin = make_member(trial, MembershipRole.ADMIN, username="site-admin")
    out = io.StringIO()
    call_command("model", "register", str(model_copy), stdout=out)
    version = governance.find_version(model_copy)
    assert (
        version is not None
        and f"#{version.pk}" in out.getvalue()
        and "not for clinical use" in out.getvalue()
    )
    ref = f"{version.name}:{version.version}"

    # A report of another model is refused; the model's own report validates it.
    report_dir = tmp_path / "report"
    report_dir.mkdir()
    (report_dir / "report.html").write_text("<html/>")
    (report_dir / "report.json").write_text(json.dumps({"model": {"weights_sha256": "0" * 64}}))
    with pytest.raises(CommandError, match="another model"):
        call_command("model", "attach-report", ref, str(report_dir))
    identity = {"weights_sha256": version.weights_sha256, "config_sha256": version.config_sha256}
    (report_dir / "report.json").write_text(json.dumps({"model": identity, "aggregate": {"dice": 0.5}}))
    call_command("model", "attach-report", ref, str(report_dir), stdout=io.StringIO())

    with pytest.raises(CommandError, match="no visit signed"):
        call_command("model", "validate", ref, "--trial", trial.code, stdout=io.StringIO())

    monkeypatch.setattr("sys.stdin", io.StringIO("wrong\n"))
    with pytest.raises(CommandError, match="password"):
        call_command(
            "model",
            "approve",
            ref,
            "--trial",
            trial.code,
            "--signer",
            "site-admin",
            "--reason",
            "r",
            "--password-stdin",
        )
    monkeypatch.setattr("sys.stdin", io.StringIO(DEFAULT_PASSWORD + "\n"))
    call_command(
        "model",
        "approve",
        ref,
        "--trial",
        trial.code,
        "--signer",
        "site-admin",
        "--reason",
        "validated",
        "--password-stdin",
        stdout=io.StringIO(),
    )
    call_command("model", "activate", ref, "--trial", trial.code, "--reason", "go", stdout=io.StringIO())
    row = TrialModel.objects.get()
    assert row.status == TrialModelStatus.ACTIVE and row.approved_by == admin
    listing = io.StringIO()
    call_command("model", "list", "--trial", trial.code, stdout=listing)
    assert "active" in listing.getvalue() and "site-admin" in listing.getvalue()
    call_command("model", "retire", ref, "--reason", "superseded", stdout=io.StringIO())
    row.refresh_from_db()
    version.refresh_from_db()
    assert row.status == TrialModelStatus.RETIRED and version.lifecycle == ModelLifecycle.RETIRED


@pytest.mark.django_db
def test_validation_job_from_the_dashboard_api_runs_on_the_signed_visits(
    synthetic_patient: SyntheticPatient,
    pipeline_patient: Any,
    media_root: Path,
    model_copy: Path,
    settings: Any,
    api_client: Any,
    client: Any,
    django_capture_on_commit_callbacks: Any,
) -> None:
    from tests.pipeline.conftest import ground_truth_mask
    from tests.pipeline.test_longitudinal import upload_with_ground_truth
    from trials.actions import assessments
    from trials.choices import Criteria
    from trials.models import Assessment, ModelVersion
    from trials.pipeline.validation import reference_case, signed_visits

    settings.CELERY_EMBEDDED = True
    settings.PIPELINE_EMBEDDED_SYNC = True
    trial = pipeline_patient.trial
    admin = make_member(trial, MembershipRole.ADMIN)
    radiologist = make_member(trial, MembershipRole.RADIOLOGIST)
    visits = {tp.visit_label: tp for tp in pipeline_patient.timepoints.all()}
    for index, label in enumerate(synthetic_patient.labels[:2]):
        upload_with_ground_truth(visits[label], synthetic_patient, index, media_root)
    baseline, follow_up = visits[synthetic_patient.labels[0]], visits[synthetic_patient.labels[1]]
    current = Assessment.objects.get(timepoint=follow_up, is_current=True, criteria=Criteria.RANO_BM)
    assessments.confirm_assessment(current, actor=radiologist, password=DEFAULT_PASSWORD)
    # Only signed visits are references; a visit's mask is the lesions the radiologist kept.
    assert signed_visits(trial) == [follow_up]
    base = Assessment.objects.get(timepoint=baseline, is_current=True, criteria=Criteria.RANO_BM)
    assessments.confirm_assessment(base, actor=radiologist, password=DEFAULT_PASSWORD)
    assert signed_visits(trial) == [baseline, follow_up]
    # The reader's signed answer at the follow-up, not the engine's on the masks, is the reference.
    engine_answer = Assessment.objects.get(timepoint=follow_up, is_current=True, criteria=Criteria.RANO_BM)
    signed = "SD" if engine_answer.overall_response == "PD" else "PD"
    assessments.override_assessment(
        engine_answer,
        overall_response=signed,
        actor=radiologist,
        password=DEFAULT_PASSWORD,
        reason="clinical deterioration",
    )
    image, reference = reference_case(follow_up)
    expected = ground_truth_mask(synthetic_patient.phantoms[1], image)
    assert np.array_equal(sitk.GetArrayFromImage(reference) != 0, sitk.GetArrayFromImage(expected) != 0)

    version, _ = governance.register_model(model_copy, actor=None)
    url = f"/api/v1/model-versions/{version.pk}/validate/"
    api_client.force_authenticate(radiologist)
    assert api_client.post(url, {"trial": trial.pk}, format="json").status_code == 403
    api_client.force_authenticate(admin)
    with django_capture_on_commit_callbacks(execute=True):
        response = api_client.post(url, {"trial": trial.pk}, format="json")
    assert response.status_code == 202, response.content
    job = ProcessingJob.objects.get(pk=response.json()["id"])
    assert job.state == JobState.SUCCEEDED, job.error
    assert job.result["cases"] == 2
    version = ModelVersion.objects.get(pk=version.pk)
    assert version.lifecycle == ModelLifecycle.VALIDATED and version.validation_summary["data"]["cases"] == 2
    # The tiny model finds nothing: the reference lesions, none detected.
    assert version.validation_summary["aggregate"]["lesion_sensitivity"] == 0.0
    # One follow-up compared: the row of the reader's signed response holds it.
    responses = version.validation_summary["responses"]
    row = responses["confusion"][responses["categories"].index(signed)]
    assert sum(row) == 1 and sum(map(sum, responses["confusion"])) == 1
    page = version.validation_report.open("rb").read().decode()
    assert "SUBJ-001/FU1" in page and version.config_sha256 in page
    assert AuditEvent.objects.filter(action="model_validate", object_id=str(version.pk)).exists()

    # The dashboard page shows it; only trial admins see and may use the validation button.
    client.force_login(radiologist)
    page = client.get(f"/trials/{trial.pk}/models/").content.decode()
    assert "validation report" in page and "Validate on signed visits" not in page
    assert client.post(f"/trials/{trial.pk}/models/{version.pk}/validate/").status_code == 403
    client.force_login(admin)
    assert "Validate on signed visits" in client.get(f"/trials/{trial.pk}/models/").content.decode()


@pytest.mark.django_db
def test_make_demo_attaches_the_committed_report_of_the_demo_model(media_root: Path) -> None:
    """docs/validation-demo is the report of the shipped demo model (same weights and config checksums):
    demo_pipeline attaches it, so the demo trial shows a validated demo model with its report."""
    from segmentation.modeldir import DEMO_MODEL_DIR
    from trials.management.commands.demo_pipeline import Command

    version, _ = governance.register_model(DEMO_MODEL_DIR, actor=None)
    Command(stdout=io.StringIO(), stderr=io.StringIO())._attach_demo_report(version)
    version.refresh_from_db()
    assert version.lifecycle == ModelLifecycle.VALIDATED and version.is_demo
    assert version.validation_summary["data"]["cases"] == 20
    assert b"not for clinical use" in version.validation_report.open("rb").read()
