"""Dashboard pages through the Django test client: role-aware UI (buttons absent and refused by the
server), 404 outside the user's trials, the viewer's NIfTI files, assets, and query counts that do not grow
with visits, lesions or patients (no N+1)."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest
import SimpleITK as sitk
from django.db import connection
from django.test.utils import CaptureQueriesContext

from tests.dashboard.world import CENTRE_L1, CENTRE_L2, CENTRE_MISSED, World
from tests.factories import (
    make_assessment,
    make_job,
    make_lesion,
    make_member,
    make_observation,
    make_patient,
    make_timepoint,
    make_trial,
)
from trials.models import Assessment, Lesion, LesionObservation
from trials.records import jobs as job_records

pytestmark = pytest.mark.django_db


def _count_queries(client: Any, url: str) -> int:
    with CaptureQueriesContext(connection) as ctx:
        response = client.get(url)
    assert response.status_code == 200, response.content[:500]
    return len(ctx.captured_queries)


def test_login_required(client: Any, world: World) -> None:
    for url in (
        "/",
        f"/trials/{world.trial.pk}/",
        f"/patients/{world.patient.pk}/",
        f"/visits/{world.fu1.pk}/",
    ):
        response = client.get(url)
        assert response.status_code == 302 and "/accounts/login/" in response["Location"]


def test_other_trials_answer_404(client: Any, world: World) -> None:
    outsider = make_member(make_trial("OTHER"), "radiologist")
    client.force_login(outsider)
    series = world.fu1.series.first()
    for url in (
        f"/trials/{world.trial.pk}/",
        f"/trials/{world.trial.pk}/plots/",
        f"/patients/{world.patient.pk}/",
        f"/visits/{world.fu1.pk}/",
        f"/series/{series.pk}/volume.nii",
        f"/series/{series.pk}/lesions.nii.gz",
        f"/series/{series.pk}/calipers.nii.gz",
    ):
        assert client.get(url).status_code == 404, url
    response = client.post(f"/visits/{world.fu1.pk}/review/drop/", {"lesion_id": world.lesions["L2"].pk})
    assert response.status_code == 404
    assert not Lesion.objects.get(pk=world.lesions["L2"].pk).is_false_positive


def test_home_lists_only_member_trials(client: Any, world: World) -> None:
    make_trial("HIDDEN-TRIAL")
    client.force_login(world.investigator)
    body = client.get("/").content.decode()
    assert "DASH-BM" in body and "HIDDEN-TRIAL" not in body and "investigator" in body


def test_trial_home_columns(client: Any, world: World) -> None:
    make_job(world.fu1.series.first(), kind="pipeline")
    job = make_job(world.fu1.series.first(), kind="segment")
    job_records.fail_job(job, error="CUDA out of memory")
    client.force_login(world.investigator)
    response = client.get(f"/trials/{world.trial.pk}/")
    summary = response.context["summaries"][0]
    assert (summary.subject_id, summary.latest_response, summary.bor) == ("SUBJ-0001", "PD", "PD")
    assert summary.pending_reviews == 2  # the baseline read (targets) and the FU1 draft, as on the timeline
    assert summary.failed_jobs == 1
    assert summary.next_expected_visit is None  # progressed: no further visit expected
    assert summary.progression_date == dt.date(2024, 3, 10)
    body = response.content.decode()
    assert 'class="resp resp-PD"' in body and ">PD<" in body  # the category as text, not only colour
    assert 'label for="patient-filter"' in body


def test_next_expected_visit_uses_last_interval(client: Any, world: World) -> None:
    patient = make_patient(world.trial, subject_id="SUBJ-0002")
    make_timepoint(patient, visit_label="BASELINE", scan_date=dt.date(2024, 1, 1), is_baseline=True)
    make_timepoint(patient, visit_label="FU1", scan_date=dt.date(2024, 2, 12))
    client.force_login(world.investigator)
    summaries = {s.subject_id: s for s in client.get(f"/trials/{world.trial.pk}/").context["summaries"]}
    assert summaries["SUBJ-0002"].next_expected_visit == dt.date(2024, 3, 25)  # + 42 days


def test_investigator_reads_but_cannot_review(client: Any, world: World) -> None:
    client.force_login(world.investigator)
    body = client.get(f"/visits/{world.fu1.pk}/").content.decode()
    assert "Images" in body and "L2" in body
    for absent in ("Drop L2", "Override and sign", "Confirm and sign", "Add lesion", 'id="click-mode"'):
        assert absent not in body, absent
    assessment = Assessment.objects.get(timepoint=world.fu1, criteria="rano_bm", is_current=True)
    posts = {
        "drop": {"lesion_id": world.lesions["L2"].pk},
        "confirm": {"assessment_id": assessment.pk, "password": world.password},
        "override": {
            "assessment_id": assessment.pk,
            "password": world.password,
            "overall_response": "SD",
            "reason": "x",
        },
        "context": {"clinical_status": "worse"},
    }
    for action, data in posts.items():
        assert client.post(f"/visits/{world.fu1.pk}/review/{action}/", data).status_code == 403, action
    assessment.refresh_from_db()
    assert assessment.status == "draft" and assessment.is_current


def test_data_manager_sees_upload_not_review(client: Any, world: World) -> None:
    client.force_login(world.data_manager)
    patient_page = client.get(f"/patients/{world.patient.pk}/").content.decode()
    assert 'class="upload"' in patient_page and "Upload series" in patient_page
    visit_page = client.get(f"/visits/{world.fu1.pk}/").content.decode()
    assert "Override and sign" not in visit_page and "Drop L2" not in visit_page
    assert 'id="context-form"' in visit_page  # steroids and clinical status are visit data
    response = client.post(f"/visits/{world.fu1.pk}/review/drop/", {"lesion_id": world.lesions["L2"].pk})
    assert response.status_code == 403
    page = response.content.decode()  # a page of the site, saying why, not a bare status line
    assert "<h1>Not allowed</h1>" in page and "does not allow this action" in page and "<main>" in page


def test_radiologist_review_through_the_pages(rad_client: Any, world: World) -> None:
    body = rad_client.get(f"/visits/{world.fu1.pk}/").content.decode()
    for present in (
        "Drop L2",
        "Override and sign",
        "Confirm and sign",
        "Add lesion",
        'for="override-password"',
    ):
        assert present in body, present
    # The override's choice is empty until the reader chooses; a drop says it applies to every visit.
    assert '<option value="" selected disabled>— choose —</option>' in body
    assert "at every visit of the patient" in body and 'value="this_visit"' in body
    refused = rad_client.post(
        f"/visits/{world.fu1.pk}/review/drop/", {"lesion_id": world.lesions["L2"].pk}, follow=True
    )
    assert "Dropping L2 needs a reason" in refused.content.decode()
    assert not Lesion.objects.get(pk=world.lesions["L2"].pk).is_false_positive
    response = rad_client.post(
        f"/visits/{world.fu1.pk}/review/drop/",
        {"lesion_id": world.lesions["L2"].pk, "reason": "vessel"},
        follow=True,
    )
    assert "L2 dropped" in response.content.decode()
    assessment = Assessment.objects.get(timepoint=world.fu1, criteria="rano_bm", is_current=True)
    assert assessment.overall_response == "SD"
    # Restoring asks for a reason too; it lands in the audit trail.
    body = rad_client.get(f"/visits/{world.fu1.pk}/").content.decode()
    assert f'id="restore-reason-{world.lesions["L2"].pk}"' in body
    rad_client.post(
        f"/visits/{world.fu1.pk}/review/restore/",
        {"lesion_id": world.lesions["L2"].pk, "reason": "it is a lesion after all"},
    )
    from trials.models import AuditEvent

    assert AuditEvent.objects.get(action="review.restore_lesion").reason == "it is a lesion after all"
    rad_client.post(
        f"/visits/{world.fu1.pk}/review/drop/", {"lesion_id": world.lesions["L2"].pk, "reason": "vessel"}
    )
    assessment = Assessment.objects.get(timepoint=world.fu1, criteria="rano_bm", is_current=True)
    assert assessment.overall_response == "SD"
    # A wrong password is refused with a message and nothing is signed.
    response = rad_client.post(
        f"/visits/{world.fu1.pk}/review/confirm/",
        {"assessment_id": assessment.pk, "password": "bad"},
        follow=True,
    )
    assert "password does not match" in response.content.decode()
    assessment.refresh_from_db()
    assert assessment.status == "draft"
    rad_client.post(
        f"/visits/{world.fu1.pk}/review/confirm/",
        {"assessment_id": assessment.pk, "password": world.password},
    )
    assessment.refresh_from_db()
    assert (assessment.status, assessment.signed_by) == ("confirmed", world.radiologist)
    audit = rad_client.get(f"/visits/{world.fu1.pk}/").context["audit_rows"]
    actions = [(event.action, event.actor_name) for event, _lines in audit]
    assert ("confirm", "rad") in actions and ("review.drop_lesion", "rad") in actions


def test_add_lesion_form_rejects_malformed_seed(rad_client: Any, world: World) -> None:
    count = Lesion.objects.count()
    response = rad_client.post(f"/visits/{world.fu1.pk}/review/add/", {"seed": "1,2"}, follow=True)
    assert "voxel index" in response.content.decode()
    assert Lesion.objects.count() == count
    assert rad_client.post(f"/visits/{world.fu1.pk}/review/nonsense/", {}).status_code == 404


def _runs(mask_zyx: Any) -> str:
    """A painted (z, y, x) mask as the viewer posts it: runs "i,j,k,n" along i."""
    runs = []
    for k, j in sorted({(int(k), int(j)) for k, j, _i in zip(*mask_zyx.nonzero(), strict=True)}):
        row = mask_zyx[k, j]
        i = 0
        while i < row.size:
            if row[i]:
                start = i
                while i < row.size and row[i]:
                    i += 1
                runs.append(f"{start},{j},{k},{i - start}")
            i += 1
    return ";".join(runs)


def test_paint_endpoint_adds_the_painted_lesion(rad_client: Any, client: Any, world: World) -> None:
    from tests.dashboard.world import _sphere
    from trials import storage

    url = f"/visits/{world.fu1.pk}/review/paint/"
    sphere = _sphere(CENTRE_MISSED, 5.0)
    form = {"size": "64,64,32", "runs": _runs(sphere), "reason": "painted in the viewer"}
    for changes, message in (
        ({"size": "64,64,30"}, "not this visit's"),
        ({"runs": ""}, "Nothing was painted"),
        ({"runs": "1,2,3"}, "i,j,k,n"),
        ({"runs": "1,2,x,4"}, "i,j,k,n"),
        ({"runs": "60,2,3,5"}, "inside the volume"),
        ({"runs": "1,2,32,1"}, "inside the volume"),
        ({"runs": "-1,2,3,1"}, "inside the volume"),
    ):
        refused = rad_client.post(url, {**form, **changes}, HTTP_ACCEPT="application/json")
        assert refused.status_code == 400 and message in refused.json()["message"], (changes, refused.json())
    assert not LesionObservation.objects.filter(lesion__label="L3").exists()
    answer = rad_client.post(url, form, HTTP_ACCEPT="application/json")
    assert answer.status_code == 200, answer.json()
    assert answer.json()["message"].startswith("L3 added from the painted region")
    obs = LesionObservation.objects.get(lesion__label="L3", timepoint=world.fu1)
    assert (sitk.GetArrayFromImage(storage.load_observation_mask(obs)) > 0).tolist() == sphere.tolist()
    client.force_login(world.investigator)  # the same client: investigators may not edit lesions
    assert client.post(url, form, HTTP_ACCEPT="application/json").status_code == 403


def _nifti(client: Any, url: str, tmp_path: Path) -> Any:
    """GET a viewer file and read it back with nibabel (an independent NIfTI reader; SimpleITK wrote it)."""
    import nibabel

    response = client.get(url)
    assert response.status_code == 200, url
    assert response["Content-Type"] == "application/octet-stream"
    assert "no-store" in response["Cache-Control"]  # clinical images stay out of every cache
    path = tmp_path / url.strip("/").replace("/", "-")
    path.write_bytes(response.content)
    return nibabel.load(path)


def test_viewer_files_are_the_series_its_lesions_and_calipers_as_nifti(
    rad_client: Any, world: World, tmp_path: Path
) -> None:
    import numpy as np

    series = world.fu1.series.first()
    volume = _nifti(rad_client, f"/series/{series.pk}/volume.nii", tmp_path)
    assert volume.shape == (64, 64, 32)
    assert volume.header.get_zooms() == pytest.approx((1.0, 1.0, 2.0))
    data = np.asarray(volume.dataobj)
    i, j, k = CENTRE_L1
    assert data[i, j, k] > 250 and abs(float(data[2, 2, 2]) - 100) < 30  # the lesion bright, tissue 100
    # NIfTI world space is RAS: voxel (i, j, k) of the LPS grid lies at (-x, -y, z) of its LPS position.
    assert volume.affine @ [i, j, k, 1] == pytest.approx([-(-32.0 + i), -(-32.0 + j), -32.0 + 2 * k, 1])

    config = rad_client.get(f"/visits/{world.fu1.pk}/").context["viewer_data"]["main"]
    values = {entry["label"]: entry["value"] for entry in config["lesions"]}
    labels = np.asarray(_nifti(rad_client, f"/series/{series.pk}/lesions.nii.gz", tmp_path).dataobj)
    assert labels[i, j, k] == values["L1"] and labels[CENTRE_L2] == values["L2"]
    assert labels[CENTRE_MISSED] == 0  # the lesion the AI missed is not in the map

    calipers = np.asarray(_nifti(rad_client, f"/series/{series.pk}/calipers.nii.gz", tmp_path).dataobj)
    ld = world.lesions["L1"].observations.get(timepoint=world.fu1).longest_diameter_mm
    slice_k = calipers[:, :, k]
    red = np.argwhere((slice_k == 1) & (np.hypot(*np.indices(slice_k.shape) - np.array([[[i]], [[j]]])) < 12))
    extent = max(np.hypot(*(a - b)) for a in red for b in red)
    assert extent == pytest.approx(ld, abs=1.5)  # 1 mm voxels: the drawn LD spans the measured LD
    assert (calipers == 2).any()  # the perpendicular
    assert set(np.unique(calipers)) <= {0, 1, 2}


def test_viewer_config_has_every_earlier_visit_and_each_its_own_window(rad_client: Any, world: World) -> None:
    data = rad_client.get(f"/visits/{world.fu1.pk}/").context["viewer_data"]
    assert data["main"]["size"] == [64, 64, 32]
    assert {entry["label"]: entry["k"] for entry in data["main"]["lesions"]} == {"L1": 16, "L2": 16}
    assert data["main"]["lesions"][0]["vox"] == pytest.approx([20, 20, 16], abs=1)  # the LD's middle
    assert [panel["visit"] for panel in data["compare"]] == ["BASELINE"]
    low, high = data["main"]["robust"]
    assert 80 < low < 100 and 290 < high < 320  # 0.5-99.5 percentiles: tissue 100, lesions 300
    assert data["compare"][0]["volume_url"] == f"/series/{world.baseline.series.first().pk}/volume.nii"


def test_review_verbs_answer_json_to_the_viewer(rad_client: Any, world: World) -> None:
    url = f"/visits/{world.fu1.pk}/review/drop/"
    answer = rad_client.post(
        url, {"lesion_id": world.lesions["L2"].pk, "reason": "vessel"}, HTTP_ACCEPT="application/json"
    )
    assert answer.status_code == 200
    assert answer.json() == {
        "ok": True,
        "message": "L2 dropped as a false positive at every visit; the assessments were recomputed.",
    }
    refused = rad_client.post(
        f"/visits/{world.fu1.pk}/review/add/", {"seed": "1,2"}, HTTP_ACCEPT="application/json"
    )
    assert refused.status_code == 400 and "voxel index" in refused.json()["message"]
    # Nothing left behind for the next page: the viewer showed the message itself.
    assert "L2 dropped" not in rad_client.get(f"/visits/{world.fu1.pk}/").content.decode()


def test_drop_at_this_visit_only_through_the_page(rad_client: Any, client: Any, world: World) -> None:
    url = f"/visits/{world.fu1.pk}/review/drop/"
    l2 = world.lesions["L2"]
    form = {"lesion_id": l2.pk, "reason": "vessel at FU1", "scope": "this_visit"}
    answer = rad_client.post(url, form, HTTP_ACCEPT="application/json")
    assert answer.status_code == 200, answer.content
    assert answer.json()["message"].startswith("L2 dropped at FU1 only")
    l2.refresh_from_db()
    assert not l2.is_false_positive
    assert not LesionObservation.objects.get(lesion=l2, timepoint=world.fu1).present
    assert LesionObservation.objects.get(lesion=l2, timepoint=world.baseline).present
    body = rad_client.get(f"/visits/{world.fu1.pk}/").content.decode()
    assert "not a lesion at this visit (reader): vessel at FU1" in body
    # An unknown scope is refused, and other roles get 403 whatever the form says.
    bad = rad_client.post(url, {**form, "scope": "everywhere"}, HTTP_ACCEPT="application/json")
    assert bad.status_code == 400 and "at this visit only" in bad.json()["message"]
    client.force_login(world.investigator)
    assert client.post(url, form, HTTP_ACCEPT="application/json").status_code == 403


def test_assets_served_locally_with_etag(client: Any, db: None) -> None:
    response = client.get("/assets/plotly.min.js")
    assert response.status_code == 200 and response["Content-Type"].startswith("text/javascript")
    body = b"".join(response.streaming_content) if response.streaming else response.content
    assert b"plotly" in body[:2000].lower()
    again = client.get("/assets/plotly.min.js", HTTP_IF_NONE_MATCH=response["ETag"])
    assert again.status_code == 304
    assert client.get("/assets/viewer.js").status_code == 200
    # Niivue, copied from npm by `make viewer` (make test and make demo run it).
    niivue = client.get("/assets/niivue.umd.js")
    assert niivue.status_code == 200, "run `make viewer`"
    assert b"niivue" in niivue.content[:1000]
    assert client.get("/assets/..%2Fsettings.py").status_code == 404
    assert client.get("/assets/other.js").status_code == 404


def test_assets_are_gzip_compressed_for_clients_that_accept_it(client: Any, db: None) -> None:
    import gzip

    plain = client.get("/assets/plotly.min.js").content
    zipped = client.get("/assets/plotly.min.js", HTTP_ACCEPT_ENCODING="gzip, deflate, br")
    assert zipped["Content-Encoding"] == "gzip" and "Accept-Encoding" in zipped["Vary"]
    assert gzip.decompress(zipped.content) == plain  # the same script, byte for byte
    assert len(zipped.content) < len(plain) / 2.5  # plotly.js: 4.6 MB -> about 1.4 MB
    # Each encoding has its own ETag, so a cache never answers one with the other.
    assert zipped["ETag"] != client.get("/assets/plotly.min.js")["ETag"]
    again = client.get(
        "/assets/plotly.min.js", HTTP_ACCEPT_ENCODING="gzip", HTTP_IF_NONE_MATCH=zipped["ETag"]
    )
    assert again.status_code == 304
    assert "Content-Encoding" not in client.get("/assets/viewer.js", HTTP_ACCEPT_ENCODING="identity")


def test_pages_use_no_cdn(rad_client: Any, world: World) -> None:
    for url in (
        f"/patients/{world.patient.pk}/",
        f"/trials/{world.trial.pk}/plots/",
        f"/visits/{world.fu1.pk}/",
    ):
        body = rad_client.get(url).content.decode()
        assert "cdn." not in body and "https://" not in body, url


def test_job_progress(rad_client: Any, world: World) -> None:
    job = make_job(world.fu1.series.first(), kind="pipeline")
    job_records.update_job_progress(job, progress_pct=40, stage="segmentation")
    data = json.loads(rad_client.get(f"/jobs/{job.pk}/progress.json").content)
    assert (data["state"], data["progress_pct"], data["stage"]) == ("queued", 40, "segmentation")
    other = make_job(None, kind="export", trial=make_trial("OTHER-JOBS"))
    assert rad_client.get(f"/jobs/{other.pk}/progress.json").status_code == 404


def _add_visits(world: World, visits: int, lesions: int) -> None:
    extra = [make_lesion(world.patient) for _ in range(lesions)]
    for n in range(visits):
        tp = make_timepoint(
            world.patient, visit_label=f"FU{n + 2}", scan_date=dt.date(2024, 5, 1) + dt.timedelta(days=60 * n)
        )
        for lesion in [*world.lesions.values(), *extra]:
            make_observation(lesion, tp, longest_diameter_mm=10.0 + n, volume_mm3=500.0)
        make_assessment(tp, sum_ld_mm=30.0, pct_change_from_baseline=-5.0)
        make_assessment(tp, criteria="volumetric", sum_volume_mm3=900.0)


def test_timeline_and_visit_query_counts_do_not_grow(rad_client: Any, world: World) -> None:
    timeline = f"/patients/{world.patient.pk}/"
    small = _count_queries(rad_client, timeline)
    small_visit = _count_queries(rad_client, f"/visits/{world.fu1.pk}/")
    _add_visits(world, visits=4, lesions=5)
    assert _count_queries(rad_client, timeline) == small
    assert _count_queries(rad_client, f"/visits/{world.fu1.pk}/") == small_visit
    assert small <= 15


def test_trial_pages_query_counts_do_not_grow(client: Any, world: World) -> None:
    client.force_login(world.investigator)
    urls = (f"/trials/{world.trial.pk}/", f"/trials/{world.trial.pk}/plots/")
    before = [_count_queries(client, url) for url in urls]
    for n in range(15):
        patient = make_patient(world.trial, subject_id=f"SUBJ-1{n:03d}")
        baseline = make_timepoint(patient, visit_label="BASELINE", is_baseline=True)
        fu = make_timepoint(patient, visit_label="FU1")
        make_assessment(baseline, overall_response="", sum_ld_mm=40.0)
        make_assessment(
            fu,
            overall_response="PR",
            sum_ld_mm=20.0,
            pct_change_from_baseline=-50.0,
            best_overall_response="PR",
        )
        job_records.fail_job(make_job(fu, kind="pipeline"), error="failed")
    assert [_count_queries(client, url) for url in urls] == before
    assert max(before) <= 15


def test_trial_plots_rows(client: Any, world: World) -> None:
    client.force_login(world.investigator)
    response = client.get(f"/trials/{world.trial.pk}/plots/")
    rows = response.context["waterfall_rows"]
    fu1 = Assessment.objects.get(timepoint=world.fu1, criteria="rano_bm", is_current=True)
    assert [(r.subject_id, r.bor) for r in rows] == [("SUBJ-0001", "PD")]
    assert rows[0].best_pct_change == pytest.approx(fu1.pct_change_from_baseline)
    assert "chart-waterfall" in response.content.decode()


def test_lesion_map_has_the_reader_added_lesion(rad_client: Any, world: World, tmp_path: Path) -> None:
    import numpy as np

    response = rad_client.post(
        f"/visits/{world.fu1.pk}/review/add/",
        {"seed": ",".join(map(str, CENTRE_MISSED)), "reason": "missed"},
        follow=True,
    )
    assert "L3 added" in response.content.decode()
    config = rad_client.get(f"/visits/{world.fu1.pk}/").context["viewer_data"]["main"]
    l3 = next(entry for entry in config["lesions"] if entry["label"] == "L3")
    assert l3["category"] == "new"
    series = world.fu1.series.first()
    labels = np.asarray(_nifti(rad_client, f"/series/{series.pk}/lesions.nii.gz", tmp_path).dataobj)
    row = np.nonzero(labels[:, CENTRE_MISSED[1], CENTRE_MISSED[2]] == l3["value"])[0]
    assert row.min() <= CENTRE_MISSED[0] - 4 and row.max() >= CENTRE_MISSED[0] + 4  # the 5 mm-radius disc


def test_timeline_shows_running_job_progress_and_evidence_links(client: Any, world: World) -> None:
    job = make_job(world.fu1.series.first(), kind="pipeline")
    job_records.start_job(job, stage="segmentation")
    job_records.update_job_progress(job, progress_pct=40, stage="segmentation")
    client.force_login(world.data_manager)
    body = client.get(f"/patients/{world.patient.pk}/").content.decode()
    assert f'data-job-id="{job.pk}" data-job-state="running"' in body
    assert 'max="100" value="40"' in body
    # Every lesion measurement links to its visit's viewer at that lesion.
    assert f'href="/visits/{world.fu1.pk}/#lesion-L2"' in body


def test_audit_change_lines() -> None:
    from types import SimpleNamespace

    from trials.views.viewer import audit_change_lines

    update = SimpleNamespace(
        before={"lesion": "L2", "is_false_positive": False}, after={"lesion": "L2", "is_false_positive": True}
    )
    assert audit_change_lines(update) == ["lesion: L2", "is_false_positive: false \u2192 true"]
    create = SimpleNamespace(
        before=None, after={"id": 3, "overall_response": "PD", "comment": "", "settings": {}}
    )
    assert audit_change_lines(create) == ["overall_response: PD"]


def test_data_manager_links_to_exports_and_quality(client: Any, world: World) -> None:
    client.force_login(world.data_manager)
    body = client.get(f"/trials/{world.trial.pk}/").content.decode()
    assert (
        f'href="/trials/{world.trial.pk}/quality/"' in body
        and f'href="/trials/{world.trial.pk}/exports/"' in body
    )
    client.force_login(world.investigator)
    body = client.get(f"/trials/{world.trial.pk}/").content.decode()
    assert "/quality/" not in body and "/exports/" not in body


def test_trial_admin_links_to_exports_and_quality(client: Any, world: World) -> None:
    """Issue 8: exports are for data managers and trial admins."""
    from tests.factories import make_member
    from trials.choices import MembershipRole

    client.force_login(make_member(world.trial, MembershipRole.ADMIN))
    body = client.get(f"/trials/{world.trial.pk}/").content.decode()
    assert f'href="/trials/{world.trial.pk}/exports/"' in body
    assert client.get(f"/api/v1/trials/{world.trial.pk}/exports/visits.csv").status_code == 200


def _nifti_bytes(tmp_path: Path) -> bytes:
    import numpy as np

    image = sitk.GetImageFromArray(
        (100 + 50 * np.random.default_rng(3).random((16, 32, 32))).astype(np.float32)
    )
    image.SetSpacing((1.0, 1.0, 2.0))
    path = tmp_path / "upload.nii.gz"
    sitk.WriteImage(image, str(path))
    return path.read_bytes()


def test_upload_series_from_the_dashboard(client: Any, world: World, tmp_path: Path) -> None:
    from django.core.files.uploadedfile import SimpleUploadedFile
    from django.test import Client

    from trials.models import ImagingSeries, ProcessingJob

    fu2 = make_timepoint(world.patient, visit_label="FU2", scan_date=dt.date(2024, 5, 10))
    url = f"/visits/{fu2.pk}/upload/"
    data = _nifti_bytes(tmp_path)
    client.force_login(world.investigator)
    assert client.post(url, {"file": SimpleUploadedFile("fu2.nii.gz", data)}).status_code == 403
    client.force_login(world.data_manager)
    assert client.post(url, {}).status_code == 400
    strict = Client(enforce_csrf_checks=True)
    strict.force_login(world.data_manager)
    assert (
        strict.post(url, {"file": SimpleUploadedFile("fu2.nii.gz", data)}).status_code == 403
    )  # no CSRF token
    response = client.post(url, {"file": SimpleUploadedFile("fu2.nii.gz", data)})
    assert response.status_code == 202, response.content
    body = json.loads(response.content)
    series = ImagingSeries.objects.get(timepoint=fu2)
    job = ProcessingJob.objects.get(pk=body["job"]["id"])
    assert body["series"]["id"] == series.pk and job.kind == "pipeline" and job.state == "queued"
    assert series.uploaded_by == world.data_manager
    duplicate = client.post(url, {"file": SimpleUploadedFile("fu2.nii.gz", data)})
    assert duplicate.status_code == 409
    garbage = client.post(url, {"file": SimpleUploadedFile("notes.nii.gz", b"not an image")})
    assert garbage.status_code == 400 and json.loads(garbage.content)["detail"]


def test_timeline_shows_nadir_and_best_response_so_far(client: Any, world: World) -> None:
    """design.md: investigators follow the sums against baseline and nadir and the best overall response
    so far; each from the visit's current assessment."""
    client.force_login(world.investigator)
    body = client.get(f"/patients/{world.patient.pk}/").content.decode()
    fu1 = Assessment.objects.get(timepoint=world.fu1, criteria="rano_bm", is_current=True)
    assert "Nadir SLD (mm)" in body and "Change from nadir" in body
    assert 'Best response <span class="muted">as of this visit</span>' in body
    assert fu1.nadir_sum_ld_mm is not None and fu1.best_overall_response
    assert f'{fu1.nadir_sum_ld_mm:.1f} <span class="muted">(BASELINE)</span>' in body
    assert f"{fu1.pct_change_from_nadir:.1f}%" in body


def test_a_data_manager_adds_a_visit_from_the_patient_page(client: Any, world: World) -> None:
    from trials.models import AuditEvent, Timepoint

    client.force_login(world.data_manager)
    page = client.get(f"/patients/{world.patient.pk}/").content.decode()
    assert 'id="add-visit-form"' in page and "Upload another series" in page  # the visits have series
    url = f"/patients/{world.patient.pk}/visits/"
    response = client.post(url, {"visit_label": "FU9", "scan_date": "2031-02-03"}, follow=True)
    visit = Timepoint.objects.get(patient=world.patient, visit_label="FU9")
    assert visit.scan_date.isoformat() == "2031-02-03" and not visit.is_baseline
    assert "Visit FU9 (2031-02-03) added" in response.content.decode()
    assert AuditEvent.objects.filter(object_type="trials.timepoint", object_id=str(visit.pk)).exists()
    again = client.post(url, {"visit_label": "FU9", "scan_date": "2031-03-03"}, follow=True)
    assert Timepoint.objects.filter(patient=world.patient, visit_label="FU9").count() == 1
    assert "FU9" in again.content.decode() and 'class="error"' in again.content.decode()

    client.force_login(world.investigator)
    assert 'id="add-visit-form"' not in client.get(f"/patients/{world.patient.pk}/").content.decode()
    assert client.post(url, {"visit_label": "FU10", "scan_date": "2031-04-03"}).status_code == 403
    assert not Timepoint.objects.filter(visit_label="FU10").exists()


def test_a_data_manager_edits_a_visit_label_and_date_audited(client: Any, world: World) -> None:
    from trials.models import AuditEvent

    url = f"/visits/{world.fu1.pk}/edit/"
    client.force_login(world.investigator)
    assert 'id="edit-visit-form"' not in client.get(f"/visits/{world.fu1.pk}/").content.decode()
    assert client.post(url, {"visit_label": "X", "scan_date": "2024-03-11", "reason": "r"}).status_code == 403

    client.force_login(world.data_manager)
    assert 'id="edit-visit-form"' in client.get(f"/visits/{world.fu1.pk}/").content.decode()
    no_reason = client.post(url, {"visit_label": "FU1b", "scan_date": "2024-03-11"}, follow=True)
    assert "reason" in no_reason.content.decode()
    before_baseline = client.post(
        url, {"visit_label": "FU1", "scan_date": "2023-01-01", "reason": "typo"}, follow=True
    )
    assert 'class="error"' in before_baseline.content.decode()  # a follow-up before the baseline
    response = client.post(
        url, {"visit_label": "FU1b", "scan_date": "2024-03-11", "reason": "date from the scan"}, follow=True
    )
    assert "Visit saved: FU1b, 2024-03-11." in response.content.decode()
    world.fu1.refresh_from_db()
    assert (world.fu1.visit_label, world.fu1.scan_date.isoformat()) == ("FU1b", "2024-03-11")
    event = AuditEvent.objects.filter(object_type="trials.timepoint", object_id=str(world.fu1.pk)).latest(
        "pk"
    )
    assert event.reason == "date from the scan" and event.actor_id == world.data_manager.pk
    assert event.after["visit_label"] == "FU1b" and event.before["visit_label"] == "FU1"


def test_timeline_labels_what_was_known_at_each_visit_and_marks_visits_after_progression(
    client: Any, db: None
) -> None:
    """20 -> 30 mm is PD at FU1; FU2 (12 mm) comes after the progression: its row says so."""
    from tests.factories import make_member
    from tests.trials.test_api_edits_reassess import patient_with
    from trials.choices import MembershipRole

    patient, visits = patient_with({"L1": [20.0, 30.0, 12.0]}, [0, 60, 120])
    client.force_login(make_member(patient.trial, MembershipRole.INVESTIGATOR))
    body = client.get(f"/patients/{patient.pk}/").content.decode()
    assert 'AI response <span class="muted">at this visit</span>' in body
    assert 'Final response <span class="muted">(reader)</span>' in body
    assert body.count("after progression</span>") == 1
    fu2_row = body[body.index(f'id="visit-{visits[2].pk}"') :].split("</tr>")[0]
    assert 'class="after-pd"' in fu2_row and "after progression" in fu2_row
    fu1_row = body[body.index(f'id="visit-{visits[1].pk}"') :].split("</tr>")[0]
    assert "after progression" not in fu1_row


def test_the_visit_page_guides_the_review_images_and_lesions_before_signing(
    rad_client: Any, world: World
) -> None:
    """The response with its reasons at the top, then the images, the lesion table, and signing last."""
    body = rad_client.get(f"/visits/{world.fu1.pk}/").content.decode()
    order = [
        body.index('id="overall-response"'),
        body.index("Why (rule outcomes)"),
        body.index('id="viewer-h"'),
        body.index('id="lesions-h"'),
        body.index('id="sign-h"'),
        body.index('id="confirm-form"'),
        body.index('id="override-form"'),
    ]
    assert order == sorted(order)
    assert 'href="#sign">Review the images and lesions, then sign</a>' in body


def test_a_review_action_returns_to_the_view_the_reader_left(rad_client: Any, world: World) -> None:
    url = f"/visits/{world.fu1.pk}/review/drop/"
    lesion = world.lesions["L2"].pk
    view = f"viewer-v20,21,16-t0-m-12.5,300-c{world.baseline.pk}-p800,2400.5"
    kept = rad_client.post(url, {"lesion_id": lesion, "reason": "vessel", "view": view})
    assert kept["Location"] == f"/visits/{world.fu1.pk}/#{view}"
    for junk in ("javascript:alert(1)", "viewer-v5,5,5\r\nSet-Cookie: x=1", "viewer-v5,5", ""):
        answer = rad_client.post(
            f"/visits/{world.fu1.pk}/review/restore/", {"lesion_id": lesion, "view": junk}
        )
        assert answer["Location"] == f"/visits/{world.fu1.pk}/#review", junk
