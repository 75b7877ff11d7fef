"""The stored choices and the rules engine's enums are one vocabulary: every value the engine returns can
be stored, and every stored value is one the engine reads (the pipeline converts with ``str()`` and the
enum constructors, so a drift would fail at run time, not here)."""

from __future__ import annotations

import pytest

from rano import response as engine
from trials import choices
from trials.pipeline.assessment import ENGINE_CRITERIA


@pytest.mark.parametrize(
    ("stored", "engine_enum", "engine_only"),
    [
        (choices.ResponseChoices, engine.Response, set()),
        (choices.CorticosteroidStatus, engine.Steroids, set()),
        (choices.ClinicalStatus, engine.ClinicalStatus, set()),
        (choices.NewLesionStatus, engine.NewLesions, set()),
        # A lesion's stored role is target or non-target; "new" is the engine's role of a follow-up lesion.
        (choices.LesionRole, engine.Role, {"new"}),
    ],
)
def test_stored_values_are_the_engine_values(stored: type, engine_enum: type, engine_only: set[str]) -> None:
    assert set(stored.values) == {member.value for member in engine_enum} - engine_only


def test_every_stored_criteria_maps_to_the_engine_criteria() -> None:
    assert set(ENGINE_CRITERIA) == set(choices.Criteria.values)
    assert set(ENGINE_CRITERIA.values()) == set(engine.Criteria)
