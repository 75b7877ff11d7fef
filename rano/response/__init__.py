"""The RANO-BM response engine (rano-bm.md sections 2-8): frozen dataclasses in, frozen dataclasses out.

Input is per-visit lesion observations with stable lesion ids (from :mod:`rano.match`, or from the
database), plus reader inputs: target selection override, lesion flags (cystic, dural, bony,
leptomeningeal, previously irradiated and progressing), "too small to measure" per observation and
unequivocal non-target progression per visit. No image is needed, so the service layer can call it
with rows it has stored. Every result carries its reasons, the settings and the engine version.

One module per part of rano-bm.md, each part a function returning its result and its reasons:

- ``types``: response categories, inputs and outputs (frozen dataclasses).
- ``targets``: target selection at baseline (section 2) and the target response (section 3; section 8
  for the sum of volumes).
- ``non_targets``: the non-target response and its growth flag (section 4).
- ``new_lesions``: new lesions, equivocal or unequivocal, and the backdated progression (section 5).
- ``overall``: the overall response table and its consequences, and radiologist overrides (section 6).
- ``confirmation``: confirmation, best overall response and progression date (section 7).
- ``reasons``: every reason the engine writes, word for word.
- ``engine``: :func:`assess`, which takes a patient's visits through the parts in order, and
  :func:`compare_criteria` (section 8).

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
