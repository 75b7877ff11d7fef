"""Row helper of visits: a change of a visit's fields, validated, saved and audited (no re-assessment).

The actions (``trials.actions.patients.edit_timepoint``, ``trials.actions.review.set_clinical_context``)
call it and then re-assess the patient.
"""

from __future__ import annotations

from typing import Any

from django.db import transaction

from trials.models import Timepoint
from trials.records.base import update_row

TIMEPOINT_EDITABLE_FIELDS = (
    "visit_label",
    "scan_date",
    "is_baseline",
    "corticosteroid_status",
    "clinical_status",
    "notes",
)


@transaction.atomic
def update_timepoint(
    timepoint: Timepoint, *, actor: Any | None, reason: str = "", correlation_id: str = "", **changes: Any
) -> Timepoint:
    """Change a visit's label, date, baseline flag, steroid or clinical status, notes."""
    return update_row(
        timepoint,
        changes,
        allowed=TIMEPOINT_EDITABLE_FIELDS,
        actor=actor,
        reason=reason,
        correlation_id=correlation_id,
    )


__all__ = ["TIMEPOINT_EDITABLE_FIELDS", "update_timepoint"]
