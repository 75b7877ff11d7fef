"""The RANO-BM response engine (rano-bm.md sections 2-8): frozen dataclasses in, frozen dataclasses out.

Input is per-visit lesion observations with stable lesion ids (from :mod:`rano.match`, or from the
database), plus reader inputs: target selection override, lesion flags (cystic, dural, bony,
leptomeningeal, previously irradiated and progressing), "too small to measure" per observation and
unequivocal non-target progression per visit. No image is needed, so the service layer can call it
with rows it has stored. Every result carries its reasons, the settings and the engine version.

The package re-exports its public names, so ``from rano.response import assess, VisitInput`` and
``from rano import response as engine; engine.assess(...)`` read the same whichever module holds them.
"""

from __future__ import annotations

from rano.response.engine import assess, compare_criteria
from rano.response.targets import select_targets
from rano.response.types import (
    Assessment,
    ClinicalStatus,
    Criteria,
    LesionFlags,
    LesionObservation,
    NewLesions,
    ReaderInputs,
    Response,
    Role,
    Steroids,
    TargetSelection,
    VisitAssessment,
    VisitInput,
)

__all__ = [
    "Assessment",
    "ClinicalStatus",
    "Criteria",
    "LesionFlags",
    "LesionObservation",
    "NewLesions",
    "ReaderInputs",
    "Response",
    "Role",
    "Steroids",
    "TargetSelection",
    "VisitAssessment",
    "VisitInput",
    "assess",
    "compare_criteria",
    "select_targets",
]
