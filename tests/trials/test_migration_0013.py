"""Migration 0013 (model governance) on a database that holds data from before it.

Each existing trial must keep the model it used (its last run's version, else the shipped demo model) as
its active model, signed by "system" with the migration's reason; the demo trial becomes a demo trial;
every existing version gets its configuration checksum. Checked by migrating a test database back to
0012, writing rows with the models of that state, and migrating forward again to the latest migration.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

from segmentation.model import read_config
from segmentation.modeldir import DEMO_MODEL_DIR, config_sha256

pytestmark = [pytest.mark.django_db(transaction=True)]

BEFORE = [("trials", "0012_pacs_sending")]
MIGRATION = ("trials", "0013_model_governance")


def _migrate(targets: list[tuple[str, str]]) -> Any:
    """Migrate the test database to ``targets``; the apps registry of the state reached."""
    executor = MigrationExecutor(connection)
    executor.migrate(targets)
    executor.loader.build_graph()
    return executor.loader.project_state(targets).apps


def _latest() -> list[tuple[str, str]]:
    return MigrationExecutor(connection).loader.graph.leaf_nodes()


def _trial_with_a_run(apps: Any, code: str, version: Any) -> Any:
    """A trial, one patient, one visit, one series segmented by ``version`` (the 0012 models)."""
    trial = apps.get_model("trials", "Trial").objects.create(code=code, title=f"Trial {code}")
    site = apps.get_model("trials", "Site").objects.create(trial=trial, code=f"{code}-S1", name="Site 1")
    patient = apps.get_model("trials", "Patient").objects.create(trial=trial, site=site, subject_id="S-001")
    visit = apps.get_model("trials", "Timepoint").objects.create(
        patient=patient, visit_label="BL", scan_date=dt.date(2025, 1, 6), is_baseline=True
    )
    series = apps.get_model("trials", "ImagingSeries").objects.create(
        timepoint=visit, series_instance_uid=f"1.2.826.0.1.3680043.10.1.{len(code)}"
    )
    apps.get_model("trials", "SegmentationRun").objects.create(
        series=series, model_version=version, model_weights_sha256=version.weights_sha256
    )
    return trial


def test_existing_trials_keep_the_model_they_used() -> None:
    latest = _latest()
    old = _migrate(BEFORE)
    try:
        ModelVersion = old.get_model("trials", "ModelVersion")
        site_model = ModelVersion.objects.create(
            name="site-unetr",
            version="2.1",
            architecture="MONAI UNETR",
            config={"name": "site-unetr", "version": "2.1", "inference": {"overlap": 0.5}},
            weights_sha256="a" * 64,
        )
        _trial_with_a_run(old, "SITE-BM", site_model)
        Trial = old.get_model("trials", "Trial")
        Trial.objects.create(code="DEMO-BM", title="Demo trial")  # no run yet
        Trial.objects.create(code="NEW-BM", title="A trial without runs")

        new = _migrate([MIGRATION])
        TrialModel = new.get_model("trials", "TrialModel")
        rows = {row.trial.code: row for row in TrialModel.objects.select_related("trial", "model_version")}
        assert set(rows) == {"SITE-BM", "DEMO-BM", "NEW-BM"}
        assert rows["SITE-BM"].model_version.name == "site-unetr"  # the model its runs used
        demo = read_config(DEMO_MODEL_DIR)
        for code in ("DEMO-BM", "NEW-BM"):  # no run: the shipped demo model, registered once
            assert rows[code].model_version.weights_sha256 == demo.weights_sha256
            assert rows[code].model_version.is_demo
        assert rows["DEMO-BM"].model_version_id == rows["NEW-BM"].model_version_id
        for row in rows.values():
            assert (row.status, row.approved_by_name) == ("active", "system")
            assert row.approved_at is not None and row.activated_at is not None
            assert "migration 0013" in row.reason
        trials = {t.code: t.is_demo for t in new.get_model("trials", "Trial").objects.all()}
        assert trials == {"SITE-BM": False, "DEMO-BM": True, "NEW-BM": False}
        versions = new.get_model("trials", "ModelVersion").objects.all()
        for version in versions:  # independent of the migration's loop: the checksum of its config
            assert version.config_sha256 == config_sha256(version.config)
        assert versions.get(name="site-unetr").config_sha256 != versions.get(is_demo=True).config_sha256
    finally:
        _migrate(latest)
