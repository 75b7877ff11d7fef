"""Shadow runs of a candidate model (README "Model governance", "Shadow runs"): the trial admin's actions
and their audit, a shadow run through the real pipeline next to the visit's own run, its agreement with
the active model against an independent computation, a shadow failure, and the Models page forms."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import SimpleITK as sitk
from django.core.management import call_command
from scipy import ndimage

from tests.factories import DEFAULT_PASSWORD, make_member, make_model_version, make_trial
from tests.pipeline.conftest import SyntheticPatient
from trials.actions import governance
from trials.choices import (
    AssessmentSource,
    Criteria,
    JobKind,
    JobState,
    MembershipRole,
    RunStatus,
    SignatureMeaning,
    TrialModelStatus,
)
from trials.exceptions import InvalidInputError, InvalidStateError, SignatureError
from trials.models import (
    Assessment,
    AuditEvent,
    LesionObservation,
    ProcessingJob,
    SegmentationRun,
    TrialModel,
)
from trials.pipeline.embedded import run_job_inline
from trials.pipeline.segmentation import get_or_create_run
from trials.pipeline.shadow import queue_shadow_run, shadow_agreement


@pytest.fixture(scope="module")
def eager_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny UNETR (4 mm windows) with its output bias far positive: it calls the head a lesion, so the
    candidate has lesions, volumes and responses of its own (random weights: what matters is that the
    agreement is computed right, not that the candidate is good)."""
    import torch

    from segmentation.model import build_network, save_model_dir
    from segmentation.train import demo_config

    config = demo_config(spacing_mm=4.0, patch=32, feature_size=4, hidden_size=32, num_heads=2)
    torch.manual_seed(2)
    network = build_network(config)
    with torch.no_grad():
        network.out.conv.conv.bias.fill_(20.0)
    return save_model_dir(network, config, tmp_path_factory.mktemp("eager-model") / "eager-unetr")


@pytest.mark.django_db
def test_shadow_start_and_stop_are_audited_trial_admin_actions(api_client: Any) -> None:
    trial = make_trial(is_demo=False)
    admin = make_member(trial, MembershipRole.ADMIN)
    radiologist = make_member(trial, MembershipRole.RADIOLOGIST)
    version, other = make_model_version(), make_model_version()

    with pytest.raises(SignatureError, match="trial admin"):
        governance.start_shadow(trial, version, actor=radiologist, reason="try it")
    with pytest.raises(InvalidInputError, match="reason"):
        governance.start_shadow(trial, version, actor=admin, reason=" ")
    row = governance.start_shadow(trial, version, actor=admin, reason="compare on live data")
    # Shadow is not approval: no signature, and the pipeline's active model stays what it was.
    assert row.status == TrialModelStatus.SHADOW and row.approved_at is None and not row.approved_by_name
    event = AuditEvent.objects.get(action=governance.SHADOW_START)
    assert (event.actor_id, event.trial_id, event.reason) == (admin.pk, trial.pk, "compare on live data")
    with pytest.raises(InvalidStateError, match="already in shadow"):
        governance.start_shadow(trial, other, actor=admin, reason="a second one")
    with pytest.raises(InvalidStateError, match="not approved"):
        governance.activate_model(row, actor=admin, reason="go")

    with pytest.raises(SignatureError):
        governance.stop_shadow(row, actor=radiologist, reason="stop")
    row = governance.stop_shadow(row, actor=admin, reason="enough data")
    assert row.status == TrialModelStatus.SHADOW_STOPPED and row.shadow_stopped_at is not None
    stop = AuditEvent.objects.get(action=governance.SHADOW_STOP)
    assert stop.reason == "enough data" and stop.before["status"] == "shadow"
    with pytest.raises(InvalidStateError, match="not in shadow"):
        governance.stop_shadow(row, actor=admin, reason="again")

    # Approving the candidate signs its own row (the shadow evidence stays with it).
    governance.attach_validation_report(version, report_html=b"<html/>", summary={}, actor=None)
    approved = governance.approve_model(
        trial, version, actor=admin, password=DEFAULT_PASSWORD, reason="shadow agreement reviewed"
    )
    assert approved.pk == row.pk and approved.status == TrialModelStatus.APPROVED
    assert approved.signature_meaning == SignatureMeaning.APPROVED_FOR_USE and approved.approved_by == admin
    with pytest.raises(InvalidStateError, match="not yet approved"):
        governance.start_shadow(trial, version, actor=admin, reason="again")

    # The API: the same verbs, trial admins only.
    investigator = make_member(trial, MembershipRole.INVESTIGATOR)
    body = {"trial": trial.pk, "model_version": other.pk, "reason": "candidate B"}
    api_client.force_authenticate(investigator)
    assert api_client.post("/api/v1/trial-models/shadow/", body, format="json").status_code == 403
    api_client.force_authenticate(admin)
    assert (
        api_client.post("/api/v1/trial-models/shadow/", {**body, "reason": ""}, format="json").status_code
        == 400
    )
    made = api_client.post("/api/v1/trial-models/shadow/", body, format="json")
    assert made.status_code == 201 and made.json()["status"] == "shadow", made.content
    pk = made.json()["id"]
    assert api_client.get(f"/api/v1/trial-models/{pk}/shadow-agreement/").json()["status"] == "shadow"
    api_client.force_authenticate(investigator)
    assert api_client.post(f"/api/v1/trial-models/{pk}/stop-shadow/", {"reason": "x"}).status_code == 403
    api_client.force_authenticate(admin)
    stopped = api_client.post(f"/api/v1/trial-models/{pk}/stop-shadow/", {"reason": "done"}, format="json")
    assert stopped.status_code == 200 and stopped.json()["status"] == "shadow_stopped"
    assert AuditEvent.objects.filter(action=governance.SHADOW_START).count() == 2

    # The command line: the same actions, as the system.
    third = make_model_version(name="cli-candidate")
    out = io.StringIO()
    call_command("model", "shadow", str(third.pk), "--trial", trial.code, "--reason", "cli", stdout=out)
    assert "In shadow" in out.getvalue()
    call_command("model", "list", "--trial", trial.code, stdout=out)
    assert "not approved: cli" in out.getvalue()
    call_command("model", "stop-shadow", str(third.pk), "--trial", trial.code, "--reason", "cli", stdout=out)
    assert TrialModel.objects.get(model_version=third).status == TrialModelStatus.SHADOW_STOPPED
    assert AuditEvent.objects.filter(action=governance.SHADOW_STOP, actor=None).count() == 1


def _ccc(x: list[float], y: list[float]) -> float:
    a, b = np.asarray(x), np.asarray(y)
    return float(2 * np.cov(a, b, bias=True)[0, 1] / (a.var() + b.var() + (a.mean() - b.mean()) ** 2))


def _kappa(a: list[str], b: list[str]) -> float:
    cats = sorted(set(a) | set(b))
    n = len(a)
    observed = sum(x == y for x, y in zip(a, b, strict=True)) / n
    expected = sum((a.count(c) / n) * (b.count(c) / n) for c in cats)
    return 1.0 if expected == 1 else (observed - expected) / (1 - expected)


def _check_agreement(
    agreement: dict[str, Any],
    actives: list[SegmentationRun],
    shadows: list[SegmentationRun],
    media_root: Path,
) -> None:
    """The stored detection and volume agreement equal an independent computation on the two runs'
    masks (scipy components, any overlap) and the candidate's lesion table."""
    volumes: dict[str, list[float]] = {"active": [], "candidate": []}
    counts = dict.fromkeys(("active", "candidate", "detected", "tp"), 0)
    for active, shadow in zip(actives, shadows, strict=True):
        cand = sitk.ReadImage(str(media_root / shadow.mask_file.name))
        ref = sitk.GetArrayFromImage(sitk.ReadImage(str(media_root / active.mask_file.name))) != 0
        cand_labels = sitk.GetArrayFromImage(cand)
        voxel = float(np.prod(cand.GetSpacing()))
        assert len(shadow.lesion_table) == int(cand_labels.max()) >= 1
        # What a stage after the network added names labels of the candidate's own mask.
        assert {int(k) for k in shadow.findings} <= set(np.unique(cand_labels).tolist()) - {0}
        assert all(f["stage"] == "small_lesions" for f in shadow.findings.values())
        assert sum(r["volume_mm3"] for r in shadow.lesion_table) == pytest.approx(
            (cand_labels != 0).sum() * voxel
        )
        ref_cc, n_ref = ndimage.label(ref, structure=np.ones((3, 3, 3)))
        cand_cc, n_cand = ndimage.label(cand_labels != 0, structure=np.ones((3, 3, 3)))
        counts["active"] += n_ref
        counts["candidate"] += n_cand
        counts["detected"] += len(set(np.unique(ref_cc[cand_labels != 0]).tolist()) - {0})
        counts["tp"] += len(set(np.unique(cand_cc[ref]).tolist()) - {0})
        volumes["active"].append(float(ref.sum()) * voxel)
        volumes["candidate"].append(sum(r["volume_mm3"] for r in shadow.lesion_table))
    detection = agreement["detection"]
    assert [detection[k] for k in ("active_lesions", "candidate_lesions")] == [
        counts["active"],
        counts["candidate"],
    ]
    assert detection["sensitivity"] == pytest.approx(counts["detected"] / counts["active"])
    assert detection["ppv"] == pytest.approx(counts["tp"] / counts["candidate"])
    sens, ppv = counts["detected"] / counts["active"], counts["tp"] / counts["candidate"]
    assert detection["f1"] == pytest.approx(2 * sens * ppv / (sens + ppv))
    diff = np.subtract(volumes["candidate"], volumes["active"])
    assert agreement["volume"]["ccc"] == pytest.approx(_ccc(volumes["active"], volumes["candidate"]))
    assert agreement["volume"]["bias_mm3"] == pytest.approx(diff.mean())
    assert agreement["volume"]["lower_limit_mm3"] == pytest.approx(diff.mean() - 1.96 * diff.std(ddof=1))
    assert agreement["volume"]["upper_limit_mm3"] == pytest.approx(diff.mean() + 1.96 * diff.std(ddof=1))


@pytest.mark.django_db
def test_shadow_runs_next_to_the_pipeline_and_drive_nothing(
    synthetic_patient: SyntheticPatient,
    pipeline_patient: Any,
    eager_model_dir: Path,
    tmp_path: Path,
    media_root: Path,
    client: Any,
) -> None:
    from tests.pipeline.test_longitudinal import upload_with_ground_truth
    from trials.actions import jobs

    trial = pipeline_patient.trial
    admin = make_member(trial, MembershipRole.ADMIN)
    data_manager = make_member(trial, MembershipRole.DATA_MANAGER)
    model_dir = Path(shutil.copytree(eager_model_dir, tmp_path / "candidate"))
    version, _ = governance.register_model(model_dir, actor=None)
    governance.start_shadow(trial, version, actor=admin, reason="candidate on live data")
    visits = {tp.visit_label: tp for tp in pipeline_patient.timepoints.all()}
    labels = synthetic_patient.labels[:2]
    # The visit's own pipeline (the phantom's ground truth as the active model's run), which queues a
    # shadow job per series once it has finished.
    uploads = [
        upload_with_ground_truth(visits[label], synthetic_patient, i, media_root)
        for i, label in enumerate(labels)
    ]
    shadow_jobs = list(ProcessingJob.objects.filter(kind=JobKind.SHADOW).order_by("pk"))
    assert [j.params["series_id"] for j in shadow_jobs] == [u.series.pk for u in uploads]
    assert all(j.state == JobState.QUEUED for j in shadow_jobs)
    observations = LesionObservation.objects.count()
    assessments = list(Assessment.objects.order_by("pk").values_list("pk", "overall_response", "status"))

    run_job_inline(shadow_jobs[0].pk)
    # A failure of the candidate (its directory edited after registration) fails its job and run only.
    config = json.loads((model_dir / "config.json").read_text())
    (model_dir / "config.json").write_text(
        json.dumps({**config, "postprocessing": {**config["postprocessing"], "threshold": 0.3}})
    )
    run_job_inline(shadow_jobs[1].pk)
    failed_job = ProcessingJob.objects.get(pk=shadow_jobs[1].pk)
    assert failed_job.state == JobState.FAILED and "no longer holds" in failed_job.error
    failed_run = SegmentationRun.objects.get(series=uploads[1].series, is_shadow=True)
    assert failed_run.status == RunStatus.FAILED and failed_run.error
    follow_up = visits[labels[1]]
    assert Assessment.objects.get(
        timepoint=follow_up, is_current=True, criteria=Criteria.RANO_BM
    ).overall_response
    # Retried once the directory is back: the run is stored.
    (model_dir / "config.json").write_text(json.dumps(config))
    jobs.retry_job(failed_job, actor=admin, reason="model directory restored")
    run_job_inline(failed_job.pk)
    assert ProcessingJob.objects.get(pk=failed_job.pk).state == JobState.SUCCEEDED

    # The shadow runs: mask and lesion table stored, marked shadow; nothing else changed.
    shadows = list(SegmentationRun.objects.filter(is_shadow=True).order_by("series__timepoint__scan_date"))
    assert [r.status for r in shadows] == [RunStatus.SUCCEEDED] * 2
    assert LesionObservation.objects.count() == observations
    assert not LesionObservation.objects.filter(segmentation_run__is_shadow=True).exists()
    assert (
        list(Assessment.objects.order_by("pk").values_list("pk", "overall_response", "status")) == assessments
    )
    actives = [SegmentationRun.objects.get(series=u.series, is_shadow=False) for u in uploads]
    agreement = TrialModel.objects.get(model_version=version).shadow_agreement
    _check_agreement(agreement, actives, shadows, media_root)
    # Responses: the follow-up's AI answer as delivered, against the candidate's own.
    [pair] = agreement["responses"]["pairs"]
    delivered = (
        Assessment.objects.filter(timepoint=follow_up, criteria=Criteria.RANO_BM, source=AssessmentSource.AI)
        .latest("created_at")
        .overall_response
    )
    assert pair["ai"] == delivered and pair["candidate"]
    responses = agreement["responses"]
    assert responses["kappa"] == pytest.approx(_kappa([pair["ai"]], [pair["candidate"]]))
    assert responses["percent_identical"] == (100.0 if pair["ai"] == pair["candidate"] else 0.0)

    # A second candidate with known masks (one lesion missed and a false positive at baseline, the
    # lesions grown by a voxel at the follow-up): detection and volumes that are not all-or-nothing.
    governance.stop_shadow(TrialModel.objects.get(model_version=version), actor=admin, reason="next")
    crafted = governance.start_shadow(trial, make_model_version(name="crafted"), actor=admin, reason="known")
    crafted_runs = [
        _crafted_shadow_run(active, crafted, grow=index == 1, media_root=media_root)
        for index, active in enumerate(actives)
    ]
    crafted_agreement = shadow_agreement(crafted)
    TrialModel.objects.filter(pk=crafted.pk).update(shadow_agreement=crafted_agreement)
    _check_agreement(crafted_agreement, actives, crafted_runs, media_root)
    assert (
        0 < crafted_agreement["detection"]["sensitivity"] < 1
        and 0 < crafted_agreement["detection"]["ppv"] < 1
    )

    # Without a candidate in shadow, a visit queues no shadow job.
    governance.stop_shadow(crafted, actor=admin, reason="seen enough")
    assert queue_shadow_run(uploads[0].series, actor=None) is None
    # A candidate that becomes the active model takes its shadow run of a series over as the visit's run.
    promoted = get_or_create_run(uploads[0].series, crafted.model_version, actor=None)
    assert (
        promoted.pk == crafted_runs[0].pk and not promoted.is_shadow and promoted.status == RunStatus.RUNNING
    )
    SegmentationRun.objects.filter(pk=promoted.pk).update(is_shadow=True, status=RunStatus.SUCCEEDED)

    # Never the visit's result: the visit page and the export show the visit's own model only.
    client.force_login(admin)
    assert version.name not in client.get(f"/visits/{follow_up.pk}/").content.decode()
    export = client.get(f"/trials/{trial.pk}/exports/visits.csv")
    assert export.status_code == 200 and version.name not in b"".join(export.streaming_content).decode()
    # The quality page shows the comparison.
    client.force_login(data_manager)
    page = client.get(f"/trials/{trial.pk}/quality/").content.decode()
    assert "Shadow candidate vs active model" in page
    assert f'id="shadow-sensitivity">{crafted_agreement["detection"]["sensitivity"]:.2f}<' in page


@pytest.mark.django_db
def test_models_page_forms_call_the_actions_for_trial_admins_only(client: Any) -> None:
    trial = make_trial(is_demo=False)
    admin = make_member(trial, MembershipRole.ADMIN)
    radiologist = make_member(trial, MembershipRole.RADIOLOGIST)
    version = make_model_version()
    governance.attach_validation_report(version, report_html=b"<html/>", summary={}, actor=None)
    url = f"/trials/{trial.pk}/models/{version.pk}/"

    client.force_login(radiologist)
    page = client.get(f"/trials/{trial.pk}/models/").content.decode()
    assert "Run in shadow" not in page and "Approve for use" not in page
    assert client.post(url + "shadow/", {"reason": "r"}).status_code == 403
    assert not TrialModel.objects.exists()

    client.force_login(admin)
    page = client.get(f"/trials/{trial.pk}/models/").content.decode()
    assert (
        f'<label for="shadow-reason-{version.pk}">' in page and f'id="approve-password-{version.pk}"' in page
    )
    assert client.post(url + "shadow/", {"reason": "candidate"}).status_code == 302
    row = TrialModel.objects.get()
    assert row.status == TrialModelStatus.SHADOW
    page = client.get(f"/trials/{trial.pk}/models/").content.decode()
    assert "In shadow (candidate, not approved)" in page and "Stop shadow" in page
    # The approval is the e-signature: a wrong password signs nothing and says so.
    response = client.post(url + "approve/", {"reason": "reviewed", "password": "wrong"}, follow=True)
    assert "password does not match" in response.content.decode()
    assert TrialModel.objects.get().status == TrialModelStatus.SHADOW
    client.post(url + "approve/", {"reason": "reviewed", "password": DEFAULT_PASSWORD})
    row.refresh_from_db()
    assert row.status == TrialModelStatus.APPROVED and row.approved_by == admin
    assert client.post(url + "activate/", {"reason": ""}, follow=True).status_code == 200
    assert TrialModel.objects.get().status == TrialModelStatus.APPROVED  # no reason: nothing changed
    client.post(url + "activate/", {"reason": "go live"})
    assert TrialModel.objects.get().status == TrialModelStatus.ACTIVE
    client.post(url + "retire/", {"reason": "withdrawn"})
    assert TrialModel.objects.get().status == TrialModelStatus.RETIRED
    assert (
        AuditEvent.objects.filter(
            action__in=[governance.SHADOW_START, governance.APPROVE, governance.ACTIVATE, governance.RETIRE],
            actor=admin,
        ).count()
        == 4
    )
    assert client.post(url + "unknown/", {"reason": "x"}).status_code == 404


def _crafted_shadow_run(
    active: SegmentationRun, candidate: TrialModel, *, grow: bool, media_root: Path
) -> Any:
    """A shadow run of ``candidate`` whose mask is the active run's, changed in a known way: grown by one
    voxel, or with its smallest lesion dropped and a false-positive cube added far from every lesion."""
    from rano.measure import label_components, measure_lesions
    from trials.records.imaging import create_segmentation_run
    from trials.storage import RUN_LABELS, run_file_name, write_label_image

    active_image = sitk.ReadImage(str(media_root / active.mask_file.name))
    labels = sitk.GetArrayFromImage(active_image)
    if grow:
        mask = ndimage.binary_dilation(labels != 0, structure=np.ones((3, 3, 3)))
    else:
        sizes = np.bincount(labels.ravel())
        sizes[0] = 0
        smallest = int(np.argmin(np.where(sizes > 0, sizes, sizes.max() + 1)))
        mask = (labels != 0) & (labels != smallest)
        mask[2:6, 2:6, 2:6] = True  # a corner of the image: far from the phantom's lesions
    assert not (labels[2:6, 2:6, 2:6] != 0).any()
    image = sitk.GetImageFromArray(mask.astype(np.uint8))
    image.CopyInformation(active_image)
    components = label_components(image, 0.0)
    run = create_segmentation_run(
        active.series, candidate.model_version, actor=None, status=RunStatus.SUCCEEDED, is_shadow=True
    )
    name = run_file_name(run, RUN_LABELS)
    write_label_image(components, name)
    run.mask_file.name = name
    run.lesion_table = [m.to_dict() for m in measure_lesions(components, relabel=False)]
    run.save()
    return run
