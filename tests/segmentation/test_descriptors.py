"""segmentation.descriptors: series descriptions keep MR terms only (PS3.15 Clean Descriptors)."""

from __future__ import annotations

import pytest

from segmentation.descriptors import MAX_LENGTH, clean_series_description

CASES = [
    # (as typed at the scanner, as stored and shown)
    ("AX T1 MPRAGE +C", "AX T1 MPRAGE +C"),
    ("T1 post-contrast", "T1 post-contrast"),
    ("3D_T1_GD_1mm", "3D T1 GD 1mm"),
    ("T2* SWI 1.5mm", "T2* SWI 1.5mm"),
    ("DOE^JOHN 19650312 t1_mprage_post", "* t1 mprage post"),
    ("Jane Smith MRN 12345678", ""),
    ("FLAIR for Dr. Long", "FLAIR *"),
    ("", ""),
    (None, ""),
]


@pytest.mark.parametrize(("raw", "cleaned"), CASES)
def test_only_mr_terms_and_short_numbers_are_kept(raw: str | None, cleaned: str) -> None:
    assert clean_series_description(raw) == cleaned


def test_the_result_is_bounded() -> None:
    assert len(clean_series_description("T1 " * 100)) <= MAX_LENGTH
