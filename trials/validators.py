"""Validators of codes, labels, names and free text, attached to the model fields.

Every write goes through ``full_clean`` (``trials.records.base``) and every API input through the
serializers built from the same fields, so one definition here bounds what any interface stores.

* codes (trial, site): letters, digits and ``. _ -``, starting with a letter or digit. A code lands in
  file names (``Content-Disposition`` of an export), CSV cells and URLs: no spaces, quotes or line breaks.
* labels (subject id, visit label, lesion label): the same, plus inner spaces (``Week 8``).
* names (trial title, site name): any printable text, no control characters.
* free text (descriptions, notes, reasons, comments): bounded (``FREE_TEXT_MAX_CHARS``); tab and line
  breaks allowed, other control characters not.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.core.validators import MaxLengthValidator, RegexValidator

#: Longest free text accepted (notes, descriptions, reasons, comments), in characters.
FREE_TEXT_MAX_CHARS = 10_000

validate_code = RegexValidator(
    r"\A[A-Za-z0-9][A-Za-z0-9._-]*\Z",
    "Use letters, digits and . _ - only, starting with a letter or digit (no spaces, quotes or line breaks).",
    code="invalid_code",
)

validate_label = RegexValidator(
    r"\A[A-Za-z0-9](?:[A-Za-z0-9._ -]*[A-Za-z0-9._-])?\Z",
    "Use letters, digits, spaces and . _ - only, starting with a letter or digit (no quotes or line breaks).",
    code="invalid_label",
)

# Positive patterns (what is allowed), so that the OpenAPI schema shows the same rule.
validate_name = RegexValidator(
    r"\A[^\x00-\x1f\x7f]+\Z",
    "Control characters (line breaks, tabs, NUL) are not allowed here.",
    code="invalid_name",
)

validate_free_text = RegexValidator(
    r"\A[^\x00-\x08\x0b\x0c\x0e-\x1f\x7f]+\Z",
    "Control characters other than tab and line breaks are not allowed.",
    code="invalid_text",
)

#: Validators of a free-text field: the character rule and the length bound.
FREE_TEXT_VALIDATORS: list[Callable[[Any], None]] = [
    validate_free_text,
    MaxLengthValidator(FREE_TEXT_MAX_CHARS),
]

__all__ = [
    "FREE_TEXT_MAX_CHARS",
    "FREE_TEXT_VALIDATORS",
    "validate_code",
    "validate_free_text",
    "validate_label",
    "validate_name",
]
