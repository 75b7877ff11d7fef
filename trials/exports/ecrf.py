"""eCRF-ready CSVs: one row per patient visit (``visits``) and one per lesion per visit (``lesions``).

Values come from the stored rows: measurements from ``LesionObservation``, sums, responses, confirmation,
BOR and progression date from the visit's current ``Assessment`` (computed by the RANO-BM engine, never
re-derived here).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from trials.choices import (
    ClinicalStatus,
    CorticosteroidStatus,
    LesionRole,
    NewLesionStatus,
    ObservationSource,
    ResponseChoices,
)
from trials.exports import queries
from trials.exports.columns import DATE, DATETIME, DECIMAL, FLAG, INTEGER, TEXT, Column, Dataset
from trials.exports.common import (
    MAX_TARGET_COLUMNS,
    counted_ld_mm,
    is_new_lesion,
    is_reviewed,
    label_sort_key,
    lesion_category,
    reference_date,
    study_day,
    too_small_setting,
)
from trials.exports.filters import ExportFilters
from trials.models import Trial, finding_at

RESPONSES = tuple(ResponseChoices.values)
#: Assessor value of an assessment no reader has signed yet.
ENGINE_ASSESSOR = "engine"

_VISIT_KEYS = (
    Column("trial_code", TEXT, "Trial (protocol) code."),
    Column("site_code", TEXT, "Site code within the trial."),
    Column("subject_id", TEXT, "Pseudonymous subject id, unique within the trial."),
    Column("visit_label", TEXT, "Visit label as recorded (e.g. BASELINE, FU1)."),
    Column(
        "visit_number",
        INTEGER,
        "1-based position of the visit among all the patient's visits by scan date (baseline is 1 when it "
        "is the first scan). Filters never renumber visits.",
    ),
    Column("scan_date", DATE, "Date of the MRI scan (YYYY-MM-DD)."),
    Column(
        "study_day",
        INTEGER,
        "Study day of the scan: day 1 is the treatment start date (else the enrolment date); no day 0. "
        "Empty when neither date is known.",
        unit="days",
    ),
)

_TARGET_COLUMNS: tuple[Column, ...] = tuple(
    column
    for n in range(1, MAX_TARGET_COLUMNS + 1)
    for column in (
        Column(
            f"tl{n}_label",
            TEXT,
            f"Label of target lesion {n} (targets ordered by label number: L2 before L10). Empty when the "
            f"patient has fewer than {n} targets.",
        ),
        Column(
            f"tl{n}_ld_mm",
            DECIMAL,
            f"Longest diameter that target lesion {n} contributes to the SLD at this visit: 0 when absent, "
            "the trial's too_small_mm at a follow-up visit when a reader marked it too small to measure, "
            "else the measured LD.",
            unit="mm",
        ),
    )
)

VISIT_COLUMNS: tuple[Column, ...] = (
    *_VISIT_KEYS,
    Column("is_baseline", FLAG, "Y for the baseline visit.", allowed=("Y", "N")),
    *_TARGET_COLUMNS,
    Column("sld_mm", DECIMAL, "Sum of the target lesions' longest diameters (SLD) at this visit.", unit="mm"),
    Column("baseline_sld_mm", DECIMAL, "SLD at the baseline visit.", unit="mm"),
    Column("nadir_sld_mm", DECIMAL, "Smallest SLD on study before this visit, baseline included.", unit="mm"),
    Column(
        "pct_change_from_baseline",
        DECIMAL,
        "Signed change of the SLD from baseline (negative: shrinkage).",
        unit="%",
    ),
    Column("pct_change_from_nadir", DECIMAL, "Signed change of the SLD from the nadir.", unit="%"),
    Column("target_response", TEXT, "Target-lesion response.", allowed=RESPONSES),
    Column("non_target_response", TEXT, "Non-target-lesion response.", allowed=RESPONSES),
    Column("new_lesions", TEXT, "New-lesion finding at this visit.", allowed=tuple(NewLesionStatus.values)),
    Column(
        "corticosteroids",
        TEXT,
        "Corticosteroid use compared with the previous visit.",
        allowed=tuple(CorticosteroidStatus.values),
    ),
    Column(
        "clinical_status",
        TEXT,
        "Clinical status compared with the previous visit.",
        allowed=tuple(ClinicalStatus.values),
    ),
    Column(
        "ai_response",
        TEXT,
        "The AI's own RANO-BM overall response of the visit, as the pipeline delivered it (the rules "
        "engine on the model's lesions), kept when a reader has since edited lesions, confirmed or "
        "overridden: a response the engine re-computed after a reader's edit is not the AI's. Empty at "
        "baseline.",
        allowed=RESPONSES,
    ),
    Column(
        "final_response",
        TEXT,
        "Overall RANO-BM response after reader review (the signed current assessment). Empty until a "
        "reader has confirmed or overridden the visit, and at baseline.",
        allowed=RESPONSES,
    ),
    Column(
        "review_status",
        TEXT,
        "Review status of the current RANO-BM assessment; empty when the visit has none.",
        allowed=("draft", "confirmed", "overridden"),
    ),
    Column(
        "confirmed",
        FLAG,
        "Y when this visit's CR/PR is confirmed by a later visit at least confirmation_days later "
        "(rano-bm.md 7). Empty when the visit has no response (no assessment, or baseline).",
        allowed=("Y", "N"),
    ),
    Column(
        "best_overall_response_to_date",
        TEXT,
        "Best overall response over the visits up to and including this one.",
        allowed=RESPONSES,
    ),
    Column(
        "progression_date",
        DATE,
        "Progression date known at this visit, backdated to the scan that first showed an equivocal new "
        "lesion when a later visit confirmed it (rano-bm.md 5).",
    ),
    Column(
        "assessor",
        TEXT,
        f"User name of the reader who signed the current assessment, or '{ENGINE_ASSESSOR}' while it is an "
        "unreviewed rules-engine draft.",
    ),
    Column(
        "assessment_date",
        DATE,
        "Date (UTC) of the signature, or of the engine's assessment while unreviewed.",
    ),
    Column(
        "esignature_meaning",
        TEXT,
        "What the signer attests (21 CFR Part 11 signature manifestation).",
        allowed=("reviewed_confirmed", "reviewed_overridden"),
    ),
    Column("esignature_datetime", DATETIME, "Date and time of the electronic signature (UTC, ISO 8601)."),
    Column(
        "model_version",
        TEXT,
        "Segmentation model (name and version) of the latest successful run on this visit's images.",
    ),
    Column("engine_version", TEXT, "Version of the RANO-BM rules engine that computed the assessment."),
    Column(
        "sum_volume_mm3",
        DECIMAL,
        "Sum of the target lesions' volumes (volumetric RANO-BM, rano-bm.md 8).",
        unit="mm3",
    ),
    Column("baseline_sum_volume_mm3", DECIMAL, "Sum of target volumes at baseline.", unit="mm3"),
    Column("nadir_sum_volume_mm3", DECIMAL, "Smallest sum of target volumes before this visit.", unit="mm3"),
    Column(
        "pct_volume_change_from_baseline",
        DECIMAL,
        "Signed change of the target-volume sum from baseline (from the volumetric assessment).",
        unit="%",
    ),
    Column(
        "volumetric_response",
        TEXT,
        "Volumetric RANO-BM response (the current volumetric assessment, else the value computed "
        "alongside the diameter-based assessment).",
        allowed=RESPONSES,
    ),
)

LESION_COLUMNS: tuple[Column, ...] = (
    *_VISIT_KEYS,
    Column("lesion_label", TEXT, "Stable lesion label (L1, L2, ...), never reused or renamed."),
    Column(
        "lesion_category",
        TEXT,
        "TARGET or NON-TARGET (chosen at baseline), NEW for a lesion first seen after baseline.",
        allowed=("TARGET", "NON-TARGET", "NEW"),
    ),
    Column("present", FLAG, "N when the lesion is absent at this visit.", allowed=("Y", "N")),
    Column(
        "merged_into",
        TEXT,
        "Label of the lesion whose mass absorbed this one at this visit (present N, counted 0 mm, but not "
        "disappeared: rano-bm.md 3); empty otherwise.",
    ),
    Column(
        "observation_source",
        TEXT,
        "Who produced the measurement: the AI pipeline, a reader (manual), or AI edited by a reader.",
        allowed=tuple(ObservationSource.values),
    ),
    Column("longest_diameter_mm", DECIMAL, "Measured axial longest diameter (LD).", unit="mm"),
    Column(
        "counted_ld_mm",
        DECIMAL,
        "For targets, the diameter counted in the SLD (0 absent, too_small_mm when marked too small); "
        "empty for other lesions.",
        unit="mm",
    ),
    Column(
        "perpendicular_diameter_mm",
        DECIMAL,
        "Longest chord perpendicular to the LD on the LD slice.",
        unit="mm",
    ),
    Column("volume_mm3", DECIMAL, "Lesion volume (voxel count x voxel volume).", unit="mm3"),
    Column("max_3d_diameter_mm", DECIMAL, "Maximum 3D diameter.", unit="mm"),
    Column("slice_count", INTEGER, "Number of axial slices on which the lesion appears."),
    Column("fragment_count", INTEGER, "Number of fragments summed into this measurement (>1: split lesion)."),
    Column("measurable", FLAG, "Measurable by RANO-BM (rano-bm.md 2).", allowed=("Y", "N")),
    Column("cystic", FLAG, "Reader flag: cystic or cavity lesion.", allowed=("Y", "N")),
    Column("dural", FLAG, "Reader flag: dural lesion.", allowed=("Y", "N")),
    Column(
        "previously_irradiated", FLAG, "Reader flag: treated with radiosurgery before.", allowed=("Y", "N")
    ),
    Column(
        "progressing_since_treatment",
        FLAG,
        "Reader flag: irradiated lesion progressing since treatment (eligible as target).",
        allowed=("Y", "N"),
    ),
    Column("too_small_to_measure", FLAG, "Reader flag: too small to measure.", allowed=("Y", "N")),
    Column(
        "unequivocal_progression",
        FLAG,
        "Reader judgement: unequivocal progression of this non-target (rano-bm.md 4).",
        allowed=("Y", "N"),
    ),
    Column("model_version", TEXT, "Segmentation model (name and version) that produced the observation."),
    Column(
        "ai_stage",
        TEXT,
        "The AI stage that drew the lesion at this visit: network (the segmentation network) or "
        "small_lesions (the small-lesion stage, on the image after the network); empty when no AI contour "
        "stands behind the row (drawn by a reader, or absent).",
        allowed=("network", "small_lesions"),
    ),
)


def _visit_keys(trial: Trial, visit: dict[str, Any]) -> dict[str, Any]:
    return {
        "trial_code": trial.code,
        "site_code": visit["site_code"],
        "subject_id": visit["subject_id"],
        "visit_label": visit["visit_label"],
        "visit_number": visit["visit_number"],
        "scan_date": visit["scan_date"],
        "study_day": study_day(visit["scan_date"], reference_date(visit)),
    }


def visit_row(trial: Trial, visit: dict[str, Any], observations: list[dict[str, Any]]) -> dict[str, Any]:
    """Build one ``visits`` row from a visit of :func:`queries.visits` and its observations."""
    has_rano = bool(visit["rano_present"])
    has_vol = visit["vol_created_at"] is not None
    reviewed = is_reviewed(visit["rano_status"])
    too_small = too_small_setting(visit, trial)
    targets = sorted(
        (
            o
            for o in observations
            if o["role"] == LesionRole.TARGET and o["first_seen_is_baseline"] is not False
        ),
        key=lambda o: label_sort_key(o["label"]),
    )
    row = _visit_keys(trial, visit)
    row["is_baseline"] = visit["is_baseline"]
    for n in range(1, MAX_TARGET_COLUMNS + 1):
        target = targets[n - 1] if n <= len(targets) else None
        row[f"tl{n}_label"] = target["label"] if target else None
        row[f"tl{n}_ld_mm"] = (
            counted_ld_mm(target, too_small, at_baseline=visit["is_baseline"]) if target else None
        )
    if has_rano:
        assessor = visit["rano_signed_by"] if reviewed else ENGINE_ASSESSOR
        signed_at = visit["rano_signed_at"]
        assessed_at = signed_at if reviewed and signed_at else visit["rano_created_at"]
    else:
        assessor, assessed_at = None, None
    row.update(
        sld_mm=visit["rano_sum_ld_mm"],
        baseline_sld_mm=visit["rano_baseline_sum_ld_mm"],
        nadir_sld_mm=visit["rano_nadir_sum_ld_mm"],
        pct_change_from_baseline=visit["rano_pct_change_from_baseline"],
        pct_change_from_nadir=visit["rano_pct_change_from_nadir"],
        target_response=visit["rano_target_response"],
        non_target_response=visit["rano_non_target_response"],
        new_lesions=visit["rano_new_lesion_status"],
        corticosteroids=visit["corticosteroid_status"],
        clinical_status=visit["clinical_status"],
        ai_response=visit["ai_response"],
        final_response=visit["rano_overall_response"] if reviewed else None,
        review_status=visit["rano_status"],
        confirmed=visit["rano_confirmed"] if has_rano and visit["rano_overall_response"] else None,
        best_overall_response_to_date=visit["rano_best_overall_response"],
        progression_date=visit["rano_progression_date"],
        assessor=assessor,
        assessment_date=assessed_at.date() if assessed_at else None,
        esignature_meaning=visit["rano_signature_meaning"] if reviewed else None,
        esignature_datetime=visit["rano_signed_at"] if reviewed else None,
        model_version=visit["model_version"],
        engine_version=visit["rano_engine_version"],
        sum_volume_mm3=visit["vol_sum_volume_mm3"] if has_vol else visit["rano_sum_volume_mm3"],
        baseline_sum_volume_mm3=(
            visit["vol_baseline_sum_volume_mm3"] if has_vol else visit["rano_baseline_sum_volume_mm3"]
        ),
        nadir_sum_volume_mm3=visit["vol_nadir_sum_volume_mm3"]
        if has_vol
        else visit["rano_nadir_sum_volume_mm3"],
        pct_volume_change_from_baseline=visit["vol_pct_change_from_baseline"] if has_vol else None,
        volumetric_response=visit["vol_overall_response"] if has_vol else visit["rano_volumetric_response"],
    )
    return row


def visit_rows(trial: Trial, filters: ExportFilters) -> Iterator[dict[str, Any]]:
    """Rows of the ``visits`` CSV, in patient (record id), scan date order."""
    stream = queries.visits_with_observations(
        queries.visits(trial, filters), queries.observations(trial, filters)
    )
    for visit, observations in stream:
        yield visit_row(trial, visit, observations)


def ai_stage(obs: dict[str, Any], findings: dict[int, dict[str, Any]]) -> str | None:
    """``network``, or the stage that added the observation's contour to its run's mask (the run's
    ``findings`` at its component label); None without an AI contour (a reader's, or absent)."""
    run, label = obs["segmentation_run_id"], obs["component_label"]
    if run is None or label is None:
        return None
    finding = finding_at(findings.get(run), label)
    return str(finding["stage"]) if finding is not None and "stage" in finding else "network"


def lesion_rows(trial: Trial, filters: ExportFilters) -> Iterator[dict[str, Any]]:
    """Rows of the ``lesions`` CSV: one per lesion per visit, lesions in label-number order."""
    stream = queries.visits_with_observations(
        queries.visits(trial, filters), queries.observations(trial, filters)
    )
    stages = queries.run_findings(trial)
    patient_id = None
    first_visit_baseline: dict[int, bool] = {}
    for visit, observations in stream:
        if visit["patient_id"] != patient_id:
            patient_id, first_visit_baseline = visit["patient_id"], {}
        keys = _visit_keys(trial, visit)
        too_small = too_small_setting(visit, trial)
        for obs in sorted(observations, key=lambda o: label_sort_key(o["label"])):
            first_visit_baseline.setdefault(obs["lesion_id"], visit["is_baseline"])
            new = is_new_lesion(obs, first_visit_baseline[obs["lesion_id"]])
            category = lesion_category(obs, new)
            model = f"{obs['model_name']} {obs['model_version_number']}" if obs["model_name"] else None
            yield {
                **keys,
                "lesion_label": obs["label"],
                "lesion_category": category,
                "present": obs["present"],
                "merged_into": obs["merged_into_label"],
                "observation_source": obs["source"],
                "longest_diameter_mm": obs["longest_diameter_mm"],
                "counted_ld_mm": counted_ld_mm(obs, too_small, at_baseline=visit["is_baseline"])
                if category == "TARGET"
                else None,
                "perpendicular_diameter_mm": obs["perpendicular_diameter_mm"],
                "volume_mm3": obs["volume_mm3"],
                "max_3d_diameter_mm": obs["max_3d_diameter_mm"],
                "slice_count": obs["slice_count"],
                "fragment_count": obs["fragment_count"],
                "measurable": obs["measurable"],
                "cystic": obs["is_cystic"],
                "dural": obs["is_dural"],
                "previously_irradiated": obs["previously_irradiated"],
                "progressing_since_treatment": obs["progressing_since_treatment"],
                "too_small_to_measure": obs["too_small_to_measure"],
                "unequivocal_progression": obs["unequivocal_progression"],
                "model_version": model,
                "ai_stage": ai_stage(obs, stages),
            }


VISITS = Dataset(
    kind="visits",
    title="Visits (eCRF, one row per patient visit)",
    description=(
        "One row per patient visit: target lesion diameters, sums against baseline and nadir, the RANO-BM "
        "responses, review and signature, provenance and the volumetric figures."
    ),
    columns=VISIT_COLUMNS,
    rows=visit_rows,
)

LESIONS = Dataset(
    kind="lesions",
    title="Lesions (eCRF, one row per lesion per visit)",
    description=(
        "One row per lesion observation: every measurement of the lesion at the visit and the reader flags. "
        "Lesions a reader dropped as false positives are left out."
    ),
    columns=LESION_COLUMNS,
    rows=lesion_rows,
)
