"""Voxel-edge outlines and plastimatch's fill rule (segmentation/outlines.py).

Oracle: the mask itself. Outlines of any mask, filled at pixel centres, must give it back exactly:
the separate loops by the even-odd rule, the keyhole polygons by OR (plastimatch's default) and by XOR
alike; one keyhole polygon per 4-connected region (scipy's labelling). The tie rule of the fill is
checked against cases plastimatch was seen to fill (tests/segmentation/test_rtstruct_plastimatch.py
compares it with plastimatch itself).
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy import ndimage

from segmentation.outlines import fill_even_odd, fill_polygon, keyhole_outlines, trace_outlines

masks = arrays(np.bool_, st.tuples(st.integers(1, 12), st.integers(1, 12)))


def as_centres(polygons: list[np.ndarray]) -> list[np.ndarray]:
    """Pixel-corner coordinates -> continuous pixel indices (centre of pixel (i, j) = (i, j))."""
    return [polygon - 0.5 for polygon in polygons]


@settings(max_examples=300, deadline=None)
@given(masks)
def test_separate_loops_fill_back_to_the_mask_by_even_odd(mask: np.ndarray) -> None:
    np.testing.assert_array_equal(fill_even_odd(as_centres(trace_outlines(mask)), mask.shape), mask)


@settings(max_examples=300, deadline=None)
@given(masks)
def test_keyhole_polygons_fill_back_to_the_mask_by_or_and_by_xor(mask: np.ndarray) -> None:
    polygons = as_centres(keyhole_outlines(mask))
    assert len(polygons) == ndimage.label(mask)[1]  # one per 4-connected region
    union = np.zeros(mask.shape, dtype=bool)
    for polygon in polygons:
        assert len(polygon) >= 4
        union |= fill_polygon(polygon, mask.shape)
    np.testing.assert_array_equal(union, mask)
    np.testing.assert_array_equal(fill_even_odd(polygons, mask.shape), mask)


@pytest.mark.parametrize(
    ("pixels", "expected"),
    [
        ([(0, 0)], [[[0, 0], [0, 1], [1, 1], [1, 0]]]),  # a single pixel: its 4 corners
        (
            [(0, 0), (1, 1)],
            [[[0, 0], [0, 1], [1, 1], [1, 0]], [[1, 1], [1, 2], [2, 2], [2, 1]]],
        ),  # 4-connected
    ],
    ids=["single-pixel", "corner-touching-pixels-are-two-outlines"],
)
def test_outline_corners(pixels, expected) -> None:
    mask = np.zeros((3, 3), dtype=bool)
    for pixel in pixels:
        mask[pixel] = True
    assert [p.tolist() for p in trace_outlines(mask)] == expected


def test_a_ring_is_one_keyhole_polygon_or_an_outer_and_a_hole_loop() -> None:
    mask = np.zeros((5, 5), dtype=bool)
    mask[1:4, 1:4] = True
    mask[2, 2] = False
    assert len(trace_outlines(mask)) == 2
    (polygon,) = keyhole_outlines(mask)
    np.testing.assert_array_equal(fill_polygon(polygon - 0.5, mask.shape), mask)


def test_fill_takes_centres_on_a_right_edge_and_not_on_a_left_edge_as_plastimatch() -> None:
    # a square through pixel centres, columns 2..5 and rows 1..4: plastimatch fills columns 3-5, rows 1-3
    square = np.array([[1.0, 2.0], [1.0, 5.0], [4.0, 5.0], [4.0, 2.0]])
    expected = np.zeros((6, 8), dtype=bool)
    expected[1:4, 3:6] = True
    np.testing.assert_array_equal(fill_polygon(square, (6, 8)), expected)
    # ... except in column 0, which takes a centre on a left edge too (seen with plastimatch)
    at_border = np.array([[1.0, 0.0], [1.0, 3.0], [4.0, 3.0], [4.0, 0.0]])
    expected = np.zeros((6, 8), dtype=bool)
    expected[1:4, 0:4] = True
    np.testing.assert_array_equal(fill_polygon(at_border, (6, 8)), expected)


def test_fewer_than_three_points_enclose_nothing() -> None:
    assert not fill_polygon(np.array([[1.0, 1.0], [2.0, 2.0]]), (4, 4)).any()
