"""CDISC SDTM-shaped datasets as CSV: TU (tumour identification), TR (tumour results), RS (response).

Variable names, order and controlled terms follow SDTMIG 3.3 and the CDISC oncology examples; every
deviation is listed in ``docs/sdtm-mapping.md``. One TU record per lesion, dated at the first visit that
shows it; TR records per lesion per visit plus the visit's SUMDIAM; RS records per assessed follow-up visit
plus one BESTRESP per subject. Responses, confirmation and BOR are the stored assessments' values.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from trials.choices import NewLesionStatus, ObservationSource, ResponseChoices
from trials.exports import queries
from trials.exports.columns import DATE, DECIMAL, EXP, INTEGER, PERM, REQ, TEXT, Column, Dataset
from trials.exports.common import (
    counted_ld_mm,
    is_new_lesion,
    is_reviewed,
    label_sort_key,
    lesion_category,
    reference_date,
    study_day,
    too_small_setting,
    usubjid,
)
from trials.exports.filters import ExportFilters
from trials.models import Trial

#: RSCAT of the diameter-based and volumetric responses.
RSCAT_RANO_BM = "RANO-BM"
RSCAT_VOLUMETRIC = "VOLUMETRIC RANO-BM"
#: Evaluator (C78735 EVAL) of every record: a central imaging read, by the pipeline and/or a reader.
EVALUATOR = "INDEPENDENT ASSESSOR"
#: --EVALID: a reader made, edited or signed the record / only the AI pipeline did.
EVALID_READER = "RADIOLOGIST"
EVALID_ALGORITHM = "ALGORITHM"

TR_TESTS: dict[str, str] = {
    "LDIAM": "Longest Diameter",
    "LPERP": "Longest Perpendicular",
    "SUMDIAM": "Sum of Diameter",
    "VOLUME": "Volume",
    "TUMSTATE": "Tumor State",
}
RS_TESTS: dict[str, str] = {
    "TRGRESP": "Target Response",
    "NTRGRESP": "Non-target Response",
    "NEWLIND": "New Lesion Indicator",
    "NEWLPROG": "New Lesion Progression",
    "OVRLRESP": "Overall Response",
    "BESTRESP": "Best Overall Response",
}
TUMSTATES = ("PRESENT", "ABSENT", "UNEQUIVOCAL PROGRESSION")
CATEGORIES = ("TARGET", "NON-TARGET", "NEW")


def _ids(domain: str, prefix: str) -> tuple[Column, ...]:
    return (
        Column("STUDYID", TEXT, "Study identifier: the trial code.", label="Study Identifier", core=REQ),
        Column(
            "DOMAIN",
            TEXT,
            f"Domain abbreviation, always {domain}.",
            allowed=(domain,),
            label="Domain Abbreviation",
            core=REQ,
        ),
        Column(
            "USUBJID",
            TEXT,
            "Unique subject identifier: STUDYID-site code-subject id.",
            label="Unique Subject Identifier",
            core=REQ,
        ),
        Column(
            f"{prefix}SEQ",
            INTEGER,
            "Sequence number, 1.. within the subject.",
            label="Sequence Number",
            core=REQ,
        ),
    )


def _timing(prefix: str, what: str) -> tuple[Column, ...]:
    return (
        Column(
            "VISITNUM",
            INTEGER,
            "Visit number: position of the visit among the patient's visits by scan date.",
            label="Visit Number",
            core=EXP,
        ),
        Column("VISIT", TEXT, "Visit label as recorded.", label="Visit Name", core=PERM),
        Column(
            f"{prefix}DTC",
            DATE,
            f"Date of the {what} (scan date, ISO 8601).",
            label=f"Date/Time of {'Tumor Identification' if prefix == 'TU' else 'Assessment'}",
            core=EXP,
        ),
        Column(
            f"{prefix}DY",
            INTEGER,
            "Study day of the scan (day 1 = treatment start, else enrolment; no day 0).",
            unit="days",
            label=f"Study Day of {'Tumor Identification' if prefix == 'TU' else 'Assessment'}",
            core=PERM,
        ),
    )


TU_COLUMNS: tuple[Column, ...] = (
    *_ids("TU", "TU"),
    Column(
        "TUGRPID",
        TEXT,
        "Group id: the lesion label when the lesion was recorded split into fragments at "
        "some visit (fragments are summed in one record, see sdtm-mapping.md); else empty.",
        label="Group ID",
        core=PERM,
    ),
    Column(
        "TULNKID", TEXT, "Link id to TR: the stable lesion label (L1, L2, ...).", label="Link ID", core=EXP
    ),
    Column(
        "TUTESTCD",
        TEXT,
        "Test short name.",
        allowed=("TUMIDENT",),
        label="Tumor Identification Short Name",
        core=REQ,
    ),
    Column(
        "TUTEST",
        TEXT,
        "Test name.",
        allowed=("Tumor Identification",),
        label="Tumor Identification Test Name",
        core=REQ,
    ),
    Column(
        "TUORRES",
        TEXT,
        "Lesion category at identification.",
        allowed=CATEGORIES,
        label="Tumor Identification Result",
        core=EXP,
    ),
    Column(
        "TUSTRESC",
        TEXT,
        "Standardised category (same as TUORRES).",
        allowed=CATEGORIES,
        label="Tumor Identification Result Std. Format",
        core=EXP,
    ),
    Column(
        "TULOC", TEXT, "Location of the lesion.", allowed=("BRAIN",), label="Location of the Tumor", core=EXP
    ),
    Column("TUMETHOD", TEXT, "Imaging method.", allowed=("MRI",), label="Method of Identification", core=EXP),
    Column("TUEVAL", TEXT, "Evaluator.", allowed=(EVALUATOR,), label="Evaluator", core=PERM),
    Column(
        "TUEVALID",
        TEXT,
        "Evaluator id: RADIOLOGIST when a reader added or edited the lesion, ALGORITHM "
        "when only the AI pipeline found it.",
        allowed=(EVALID_READER, EVALID_ALGORITHM),
        label="Evaluator Identifier",
        core=PERM,
    ),
    *_timing("TU", "scan that first shows the lesion"),
)

TR_COLUMNS: tuple[Column, ...] = (
    *_ids("TR", "TR"),
    Column(
        "TRGRPID",
        TEXT,
        "Group: the lesion category; SUMDIAM records are TARGET.",
        allowed=CATEGORIES,
        label="Group ID",
        core=PERM,
    ),
    Column("TRLNKID", TEXT, "Link id to TU (lesion label); empty for SUMDIAM.", label="Link ID", core=EXP),
    Column(
        "TRLNKGRP",
        TEXT,
        "Link group to the RS records of the same visit: the visit label.",
        label="Link Group",
        core=PERM,
    ),
    Column(
        "TRTESTCD",
        TEXT,
        "Test short name.",
        allowed=tuple(TR_TESTS),
        label="Tumor Assessment Short Name",
        core=REQ,
    ),
    Column(
        "TRTEST",
        TEXT,
        "Test name.",
        allowed=tuple(TR_TESTS.values()),
        label="Tumor Assessment Test Name",
        core=REQ,
    ),
    Column(
        "TRORRES",
        TEXT,
        "Result as collected: a number (LDIAM/LPERP/SUMDIAM in mm with 1 decimal, VOLUME "
        "in mm3 with 1 decimal) or a TUMSTATE term. Absent targets measure 0; a target a reader marked too "
        "small to measure counts the trial's too_small_mm.",
        label="Result or Finding in Original Units",
        core=EXP,
    ),
    Column("TRORRESU", TEXT, "Unit of TRORRES.", allowed=("mm", "mm3"), label="Original Units", core=EXP),
    Column(
        "TRSTRESC",
        TEXT,
        "Standardised character result (same as TRORRES).",
        label="Character Result/Finding in Std Format",
        core=EXP,
    ),
    Column(
        "TRSTRESN",
        DECIMAL,
        "Standardised numeric result (numeric tests only).",
        label="Numeric Result/Finding in Standard Units",
        core=EXP,
    ),
    Column("TRSTRESU", TEXT, "Unit of TRSTRESN.", allowed=("mm", "mm3"), label="Standard Units", core=EXP),
    Column(
        "TRSTAT",
        TEXT,
        "NOT DONE when a present lesion has no measurement.",
        allowed=("NOT DONE",),
        label="Completion Status",
        core=PERM,
    ),
    Column(
        "TRMETHOD",
        TEXT,
        "Imaging method.",
        allowed=("MRI",),
        label="Method used to Identify the Tumor",
        core=EXP,
    ),
    Column("TREVAL", TEXT, "Evaluator.", allowed=(EVALUATOR,), label="Evaluator", core=PERM),
    Column(
        "TREVALID",
        TEXT,
        "RADIOLOGIST for reader-made or reader-edited measurements (SUMDIAM: a signed "
        "assessment), ALGORITHM for AI ones.",
        allowed=(EVALID_READER, EVALID_ALGORITHM),
        label="Evaluator Identifier",
        core=PERM,
    ),
    *_timing("TR", "scan"),
)

_RESPONSE_TERMS = (*ResponseChoices.values, "Y", "N", "EQUIVOCAL")

RS_COLUMNS: tuple[Column, ...] = (
    *_ids("RS", "RS"),
    Column(
        "RSLNKGRP",
        TEXT,
        "Link group to the visit's TR records (the visit label); empty for BESTRESP.",
        label="Link Group",
        core=PERM,
    ),
    Column(
        "RSTESTCD", TEXT, "Test short name.", allowed=tuple(RS_TESTS), label="Assessment Short Name", core=REQ
    ),
    Column("RSTEST", TEXT, "Test name.", allowed=tuple(RS_TESTS.values()), label="Assessment Name", core=REQ),
    Column(
        "RSCAT",
        TEXT,
        "Response criteria.",
        allowed=(RSCAT_RANO_BM, RSCAT_VOLUMETRIC),
        label="Category for Assessment",
        core=EXP,
    ),
    Column(
        "RSORRES",
        TEXT,
        "Result: a response (CR, PR, SD, PD, NE, NON-CR/NON-PD); NEWLIND Y / EQUIVOCAL / N; NEWLPROG Y / N.",
        allowed=_RESPONSE_TERMS,
        label="Result or Finding in Original Units",
        core=EXP,
    ),
    Column(
        "RSSTRESC",
        TEXT,
        "Standardised result (same as RSORRES).",
        allowed=_RESPONSE_TERMS,
        label="Character Result/Finding in Std Format",
        core=EXP,
    ),
    Column(
        "RSDRVFL", TEXT, "Y for the derived BESTRESP record.", allowed=("Y",), label="Derived Flag", core=PERM
    ),
    Column("RSEVAL", TEXT, "Evaluator.", allowed=(EVALUATOR,), label="Evaluator", core=PERM),
    Column(
        "RSEVALID",
        TEXT,
        "RADIOLOGIST when a reader signed the assessment, else ALGORITHM (rules engine draft).",
        allowed=(EVALID_READER, EVALID_ALGORITHM),
        label="Evaluator Identifier",
        core=PERM,
    ),
    Column(
        "RSACPTFL",
        TEXT,
        "Y when a reader has signed (confirmed or overridden) the assessment.",
        allowed=("Y",),
        label="Accepted Record Flag",
        core=PERM,
    ),
    *_timing("RS", "assessed scan"),
)


def _timing_values(prefix: str, visit: dict[str, Any]) -> dict[str, Any]:
    return {
        "VISITNUM": visit["visit_number"],
        "VISIT": visit["visit_label"],
        f"{prefix}DTC": visit["scan_date"],
        f"{prefix}DY": study_day(visit["scan_date"], reference_date(visit)),
    }


def _subject(trial: Trial, visit: dict[str, Any]) -> str:
    return usubjid(trial.code, visit["site_code"], visit["subject_id"])


def _evalid(observation: dict[str, Any]) -> str:
    return EVALID_ALGORITHM if observation["source"] == ObservationSource.AI else EVALID_READER


def _stream(trial: Trial, filters: ExportFilters) -> Iterator[tuple[dict[str, Any], list[dict[str, Any]]]]:
    return queries.visits_with_observations(
        queries.visits(trial, filters), queries.observations(trial, filters)
    )


def tu_rows(trial: Trial, filters: ExportFilters) -> Iterator[dict[str, Any]]:
    """TU records: one per lesion, at the first exported visit that has an observation of it."""
    patient_id, seq, seen = None, 0, set[str]()
    for visit, observations in _stream(trial, filters):
        if visit["patient_id"] != patient_id:
            patient_id, seq, seen = visit["patient_id"], 0, set[str]()
        for obs in sorted(observations, key=lambda o: label_sort_key(o["label"])):
            if obs["lesion_id"] in seen:
                continue
            seen.add(obs["lesion_id"])
            seq += 1
            category = lesion_category(obs, is_new_lesion(obs, visit["is_baseline"]))
            yield {
                "STUDYID": trial.code,
                "DOMAIN": "TU",
                "USUBJID": _subject(trial, visit),
                "TUSEQ": seq,
                "TUGRPID": obs["label"] if obs["ever_split"] else None,
                "TULNKID": obs["label"],
                "TUTESTCD": "TUMIDENT",
                "TUTEST": "Tumor Identification",
                "TUORRES": category,
                "TUSTRESC": category,
                "TULOC": "BRAIN",
                "TUMETHOD": "MRI",
                "TUEVAL": EVALUATOR,
                "TUEVALID": _evalid(obs),
                **_timing_values("TU", visit),
            }


def _tr_base(trial: Trial, visit: dict[str, Any]) -> dict[str, Any]:
    """Values shared by every TR record of one visit (computed once per visit, not per record)."""
    return {
        "STUDYID": trial.code,
        "DOMAIN": "TR",
        "USUBJID": _subject(trial, visit),
        "TRLNKGRP": visit["visit_label"],
        "TRMETHOD": "MRI",
        "TREVAL": EVALUATOR,
        **_timing_values("TR", visit),
    }


def _tr(
    base: dict[str, Any],
    testcd: str,
    value: Any,
    unit: str | None,
    group: str,
    lnkid: str | None,
    evalid: str,
) -> dict[str, Any]:
    if isinstance(value, float | int) and not isinstance(value, bool):
        text, number = f"{float(value):.1f}", float(value)
    else:
        text, number = value, None
    return {
        **base,
        "TRSEQ": None,  # numbered by the caller, per subject
        "TRGRPID": group,
        "TRLNKID": lnkid,
        "TRTESTCD": testcd,
        "TRTEST": TR_TESTS[testcd],
        "TRORRES": text,
        "TRORRESU": unit if number is not None else None,
        "TRSTRESC": text,
        "TRSTRESN": number,
        "TRSTRESU": unit if number is not None else None,
        "TRSTAT": "NOT DONE" if value is None else None,
        "TREVALID": evalid,
    }


def _tr_visit(
    trial: Trial,
    visit: dict[str, Any],
    observations: list[dict[str, Any]],
    first_visit_baseline: dict[int, bool],
) -> Iterator[dict[str, Any]]:
    base = _tr_base(trial, visit)
    too_small = too_small_setting(visit, trial)
    for obs in sorted(observations, key=lambda o: label_sort_key(o["label"])):
        first_visit_baseline.setdefault(obs["lesion_id"], visit["is_baseline"])
        category = lesion_category(obs, is_new_lesion(obs, first_visit_baseline[obs["lesion_id"]]))
        ids = (category, obs["label"], _evalid(obs))
        present = obs["present"]
        if category == "TARGET":
            ld = counted_ld_mm(obs, too_small, at_baseline=visit["is_baseline"])
            yield _tr(base, "LDIAM", ld, "mm", *ids)
            if present and obs["perpendicular_diameter_mm"] is not None:
                yield _tr(base, "LPERP", obs["perpendicular_diameter_mm"], "mm", *ids)
            volume = obs["volume_mm3"] if present else 0.0
            if volume is not None:
                yield _tr(base, "VOLUME", volume, "mm3", *ids)
            continue
        if not present:
            state = "ABSENT"
        elif obs["unequivocal_progression"]:
            state = "UNEQUIVOCAL PROGRESSION"
        else:
            state = "PRESENT"
        yield _tr(base, "TUMSTATE", state, None, *ids)
        if present and obs["longest_diameter_mm"] is not None:
            yield _tr(base, "LDIAM", obs["longest_diameter_mm"], "mm", *ids)
        if present and obs["volume_mm3"] is not None:
            yield _tr(base, "VOLUME", obs["volume_mm3"], "mm3", *ids)
    if visit["rano_present"] and visit["rano_sum_ld_mm"] is not None:
        evalid = EVALID_READER if is_reviewed(visit["rano_status"]) else EVALID_ALGORITHM
        yield _tr(base, "SUMDIAM", visit["rano_sum_ld_mm"], "mm", "TARGET", None, evalid)


def tr_rows(trial: Trial, filters: ExportFilters) -> Iterator[dict[str, Any]]:
    """TR records: per visit, each lesion's results in label order, then the visit's SUMDIAM."""
    patient_id, seq, first_visit_baseline = None, 0, dict[int, bool]()
    for visit, observations in _stream(trial, filters):
        if visit["patient_id"] != patient_id:
            patient_id, seq, first_visit_baseline = visit["patient_id"], 0, {}
        for row in _tr_visit(trial, visit, observations, first_visit_baseline):
            seq += 1
            row["TRSEQ"] = seq
            yield row


def _rs(
    trial: Trial,
    visit: dict[str, Any],
    testcd: str,
    result: str,
    category: str,
    *,
    per_visit: bool = True,
    reviewed: bool,
) -> dict[str, Any]:
    timing = (
        _timing_values("RS", visit)
        if per_visit
        else {"VISITNUM": None, "VISIT": None, "RSDTC": None, "RSDY": None}
    )
    return {
        "STUDYID": trial.code,
        "DOMAIN": "RS",
        "USUBJID": _subject(trial, visit),
        "RSSEQ": None,
        "RSLNKGRP": visit["visit_label"] if per_visit else None,
        "RSTESTCD": testcd,
        "RSTEST": RS_TESTS[testcd],
        "RSCAT": category,
        "RSORRES": result,
        "RSSTRESC": result,
        "RSDRVFL": None if per_visit else "Y",
        "RSEVAL": EVALUATOR,
        "RSEVALID": EVALID_READER if reviewed else EVALID_ALGORITHM,
        "RSACPTFL": "Y" if reviewed else None,
        **timing,
    }


_NEWLIND = {
    NewLesionStatus.NONE: "N",
    NewLesionStatus.EQUIVOCAL: "EQUIVOCAL",
    NewLesionStatus.UNEQUIVOCAL: "Y",
}


def _rs_visit(trial: Trial, visit: dict[str, Any]) -> Iterator[dict[str, Any]]:
    reviewed = is_reviewed(visit["rano_status"])
    if visit["rano_present"] and visit["rano_overall_response"]:
        if visit["rano_target_response"]:
            yield _rs(
                trial, visit, "TRGRESP", visit["rano_target_response"], RSCAT_RANO_BM, reviewed=reviewed
            )
        if visit["rano_non_target_response"]:
            yield _rs(
                trial, visit, "NTRGRESP", visit["rano_non_target_response"], RSCAT_RANO_BM, reviewed=reviewed
            )
        status = visit["rano_new_lesion_status"] or NewLesionStatus.NONE
        yield _rs(trial, visit, "NEWLIND", _NEWLIND[status], RSCAT_RANO_BM, reviewed=reviewed)
        immunotherapy = (visit["rano_settings"] or {}).get("immunotherapy", trial.immunotherapy)
        progression = status == NewLesionStatus.UNEQUIVOCAL and not immunotherapy
        yield _rs(trial, visit, "NEWLPROG", "Y" if progression else "N", RSCAT_RANO_BM, reviewed=reviewed)
        yield _rs(trial, visit, "OVRLRESP", visit["rano_overall_response"], RSCAT_RANO_BM, reviewed=reviewed)
    if visit["vol_created_at"] is not None and visit["vol_overall_response"]:
        yield _rs(
            trial,
            visit,
            "OVRLRESP",
            visit["vol_overall_response"],
            RSCAT_VOLUMETRIC,
            reviewed=is_reviewed(visit["vol_status"]),
        )


def rs_rows(trial: Trial, filters: ExportFilters) -> Iterator[dict[str, Any]]:
    """RS records: per assessed follow-up visit TRGRESP, NTRGRESP, NEWLIND, NEWLPROG, OVRLRESP (and the
    volumetric OVRLRESP when assessed), then one BESTRESP per subject from the last stored BOR."""
    patient_id, seq = None, 0
    last: dict[str, Any] | None = None

    def best(visit: dict[str, Any]) -> Iterator[dict[str, Any]]:
        yield _rs(
            trial,
            visit,
            "BESTRESP",
            visit["rano_best_overall_response"],
            RSCAT_RANO_BM,
            per_visit=False,
            reviewed=is_reviewed(visit["rano_status"]),
        )

    for visit in queries.visits(trial, filters):
        if visit["patient_id"] != patient_id:
            if last is not None:
                for row in best(last):
                    seq += 1
                    yield {**row, "RSSEQ": seq}
            patient_id, seq, last = visit["patient_id"], 0, None
        for row in _rs_visit(trial, visit):
            seq += 1
            yield {**row, "RSSEQ": seq}
        if visit["rano_present"] and visit["rano_best_overall_response"]:
            last = visit
    if last is not None:
        for row in best(last):
            seq += 1
            yield {**row, "RSSEQ": seq}


TU = Dataset(
    kind="tu",
    title="SDTM TU (Tumor/Lesion Identification)",
    description="One record per lesion: its category (TARGET, NON-TARGET, NEW) at the first visit showing it.",
    columns=TU_COLUMNS,
    rows=tu_rows,
    sdtm_domain="TU",
)
TR = Dataset(
    kind="tr",
    title="SDTM TR (Tumor/Lesion Results)",
    description="Per lesion per visit: LDIAM, LPERP, VOLUME (targets) or TUMSTATE (+ LDIAM, VOLUME) for "
    "non-target and new lesions; one SUMDIAM per assessed visit.",
    columns=TR_COLUMNS,
    rows=tr_rows,
    sdtm_domain="TR",
)
RS = Dataset(
    kind="rs",
    title="SDTM RS (Disease Response)",
    description="Per assessed follow-up visit: target, non-target, new-lesion and overall responses (RSCAT "
    "RANO-BM; VOLUMETRIC RANO-BM when assessed); one BESTRESP per subject.",
    columns=RS_COLUMNS,
    rows=rs_rows,
    sdtm_domain="RS",
)
