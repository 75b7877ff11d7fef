"""Voxel-edge outlines of 2D masks and even-odd rasterisation of planar contours (for RTSTRUCT).

Planning systems and plastimatch rasterise an RTSTRUCT by testing each voxel centre against the
contours of its slice. A polygon through the centres of the boundary voxels therefore loses the outer
half-voxel ring (a 10 x 10 x 10 cube comes back as 810 voxels). The outlines here run along voxel edges
instead: in index space they pass through pixel corners (centre +/- 0.5), so every voxel centre lies
strictly inside or strictly outside, and testing centres gives back exactly the mask that was outlined.

Coordinates are (row, column) in pixel-corner units: corner (i, j) is the top-left corner of pixel
(i, j), i.e. continuous index (column j - 0.5, row i - 0.5).

Connectivity: foreground is 4-connected. Two pixels that touch only at a corner get separate outlines
(at such a corner the tracer turns to stay on the pixel it is going round); background is thus
8-connected, and a hole is background that no diagonal gap joins to the outside. No outline crosses
itself or repeats an edge; one goes through the same corner twice only where two pixels of its own
region touch diagonally round a gap of background.

Holes: readers disagree on several contours of one ROI on one slice. Planning systems such as
RayStation, and plastimatch with ``--xor-contours``, combine them by the even-odd rule (a contour inside
another is a hole); plastimatch by default fills each contour and ORs them, which fills every hole.
:func:`keyhole_outlines`, which the RTSTRUCT writer uses, therefore joins each hole to its region by a
keyhole bridge of zero width (the technique PS3.3 C.8.8.6 names for holes), so a region with holes is
one contour that every one of these rules fills the same way. :func:`trace_outlines` returns the
separate loops (outer boundaries and holes), to be filled by the even-odd rule.

Written here because no library at hand traces outlines along pixel edges: scikit-image's
``find_contours`` and OpenCV's ``findContours`` both return curves through pixel centres.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

#: Moves along pixel edges as (d_row, d_column); the outline goes clockwise on screen (rows downwards),
#: so the foreground lies on the right of each edge.
_RIGHT, _DOWN, _LEFT, _UP = (0, 1), (1, 0), (0, -1), (-1, 0)
#: For each incoming move, the outgoing moves in order of preference: a right turn first (it stays on
#: the pixel being gone round, which makes corner-touching pixels separate outlines), then straight on,
#: then left.
_PREFERENCE = {
    _RIGHT: (_DOWN, _RIGHT, _UP),
    _DOWN: (_LEFT, _DOWN, _RIGHT),
    _LEFT: (_UP, _LEFT, _DOWN),
    _UP: (_RIGHT, _UP, _LEFT),
}


def _boundary_edges(mask: np.ndarray) -> dict[tuple[int, int], list[tuple[int, int]]]:
    """Start corner -> moves of the directed edges between foreground and background pixels."""
    padded = np.pad(mask.astype(bool), 1)
    inner = padded[1:-1, 1:-1]
    edges: dict[tuple[int, int], list[tuple[int, int]]] = {}
    # top edges go right, right edges down, bottom edges left, left edges up (clockwise on screen)
    sides = (
        (inner & ~padded[:-2, 1:-1], (0, 0), _RIGHT),
        (inner & ~padded[1:-1, 2:], (0, 1), _DOWN),
        (inner & ~padded[2:, 1:-1], (1, 1), _LEFT),
        (inner & ~padded[1:-1, :-2], (1, 0), _UP),
    )
    for exposed, (d_row, d_col), move in sides:
        for row, col in zip(*np.nonzero(exposed), strict=True):
            edges.setdefault((int(row) + d_row, int(col) + d_col), []).append(move)
    return edges


def _trace_loops(mask: np.ndarray) -> list[list[tuple[int, int]]]:
    """Closed loops of pixel corners (every corner passed, not only turns) around regions and holes."""
    edges = _boundary_edges(mask)
    loops = []
    while edges:
        start = min(edges)  # top-left corner of what is left: deterministic order
        corner, move = start, edges[start][0]
        points = [start]
        while True:
            moves = edges[corner]
            moves.remove(move)
            if not moves:
                del edges[corner]
            corner = (corner[0] + move[0], corner[1] + move[1])
            if corner == start:
                # the top-left corner has one edge in and one out (a corner where four edges meet has
                # one from above), so coming back to it closes the loop
                break
            points.append(corner)
            following = edges[corner]
            move = next(m for m in _PREFERENCE[move] if m in following)
        loops.append(points)
    return loops


def _is_hole(loop: list[tuple[int, int]]) -> bool:
    """Whether a loop runs anticlockwise on screen (rows downwards), i.e. round background."""
    rows = np.asarray([p[0] for p in loop], dtype=float)
    cols = np.asarray([p[1] for p in loop], dtype=float)
    return float(np.dot(cols, np.roll(rows, -1)) - np.dot(rows, np.roll(cols, -1))) < 0


def _turns(loop: list[tuple[int, int]]) -> np.ndarray:
    """The loop without the corners where it goes straight on (reversals at a keyhole bridge stay)."""
    points = np.asarray(loop, dtype=float)
    before = points - np.roll(points, 1, axis=0)
    after = np.roll(points, -1, axis=0) - points
    straight = (before[:, 0] * after[:, 1] - before[:, 1] * after[:, 0] == 0) & (
        np.einsum("ij,ij->i", before, after) > 0
    )
    return points[~straight]


def trace_outlines(mask: np.ndarray) -> list[np.ndarray]:
    """Outlines of a 2D mask along pixel edges, one closed polygon per outer boundary and per hole.

    Args:
        mask: Boolean (rows, columns) array.

    Returns:
        Polygons as (n, 2) float arrays of (row, column) pixel-corner coordinates, in pixel units
        relative to the top-left corner of pixel (0, 0); only the corners where the outline turns are
        kept, so a single pixel is 4 points. Outer boundaries run clockwise on screen, holes
        anticlockwise. Filled by the even-odd rule at pixel centres they give back ``mask`` exactly.
    """
    return [_turns(loop) for loop in _trace_loops(mask)]


def keyhole_outlines(mask: np.ndarray) -> list[np.ndarray]:
    """Outlines of a 2D mask along pixel edges, each region's holes joined to it by keyhole bridges.

    Each hole is joined to the outline above it by a bridge of zero width: a straight cut up the pixel
    edge line from the hole's top-left corner to the first outline it meets (the region's outer
    boundary or another hole, which is joined in turn), walked there and back. So each 4-connected
    region is one polygon; an island inside a hole is a polygon of its own. The bridge encloses no
    pixel centre and is crossed twice by any row, so the polygons give back ``mask`` exactly whether a
    reader fills each polygon and ORs them (plastimatch's default), XORs the contours of a slice
    (planning systems, ``plastimatch --xor-contours``) or uses the non-zero winding rule.

    Args:
        mask: Boolean (rows, columns) array.

    Returns:
        Polygons as (n, 2) float arrays of (row, column) pixel-corner coordinates, as
        :func:`trace_outlines` returns them.
    """
    loops = _trace_loops(mask)
    holes = [_is_hole(loop) for loop in loops]
    owner = {corner: number for number, loop in enumerate(loops) for corner in loop}
    root = list(range(len(loops)))

    def find(number: int) -> int:
        while root[number] != number:
            number = root[number]
        return number

    for number, loop in enumerate(loops):
        if not holes[number]:
            continue
        top = min(loop)  # top-left corner: the pixels above it belong to the surrounding region
        corner = (top[0] - 1, top[1])
        while corner not in owner:
            corner = (corner[0] - 1, corner[1])
        target, joined = find(owner[corner]), find(number)
        into, hole = loops[target], loops[joined]
        at, start = into.index(corner), hole.index(top)
        # ... corner, top, (round the hole), top, corner, ...
        loops[target] = [*into[: at + 1], *hole[start:], *hole[:start], top, *into[at:]]
        loops[joined] = []
        root[joined] = target
    return [_turns(loop) for loop in loops if loop]


def fill_polygon(polygon: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Pixels of a (rows, columns) grid inside one closed polygon, as plastimatch's rasteriser fills them.

    A scanline fill at pixel centres (plastimatch ``rasterize_slice``, reimplemented so that MetTrack
    reads an RTSTRUCT as a site reading it with plastimatch does, ties included): an edge crosses the
    rows ``low <= row < high`` of its span; along a row, a pixel takes the parity of the crossings at
    or left of where its run of pixels starts, so a centre exactly on a right-hand edge is inside and
    one exactly on a left-hand edge is outside (except in column 0). Coordinates are single precision
    and stepped from row to row, as plastimatch does. Voxel-edge outlines (no centre on an edge) fill
    the same under any such rule.

    Args:
        polygon: (n, 2) array of (row, column) continuous pixel indices (the centre of pixel (i, j) is
            (i, j)); closed implicitly (a repeated first point at the end is dropped).
        shape: (rows, columns) of the grid.

    Returns:
        Boolean (rows, columns) mask; empty for fewer than 3 points.
    """
    rows, columns = shape
    mask = np.zeros(shape, dtype=bool)
    points = np.asarray(polygon, dtype=np.float32)
    if len(points) > 1 and (points[0] == points[-1]).all():
        points = points[:-1]
    if len(points) < 3:
        return mask
    crossings: list[list[float]] = [[] for _ in range(rows)]
    for (y_start, x_start), (y_end, x_end) in zip(points, np.roll(points, -1, axis=0), strict=True):
        if y_start == y_end:
            continue
        (y_low, x_low), (y_high, x_high) = sorted(((y_start, x_start), (y_end, x_end)))
        first, last = int(np.ceil(y_low)), int(np.floor(y_high))
        if y_high == last:
            last -= 1  # an upper end on a row does not cross it
        first, last = max(first, 0), min(last, rows - 1)
        step = np.float32((x_high - x_low) / (y_high - y_low))
        x = np.float32(x_low + (first - y_low) * step)
        for row in range(first, last + 1):
            crossings[row].append(float(x))
            x = np.float32(x + step)
    for row, xs in enumerate(crossings):
        xs.sort()
        column, inside, taken = 0, False, 0
        while column < columns:
            while taken < len(xs) and column >= xs[taken]:
                taken += 1
                inside = not inside
            end = columns if taken == len(xs) else min(int(np.floor(xs[taken])) + 1, columns)
            mask[row, column:end] = inside
            column = end
    return mask


def fill_even_odd(polygons: Sequence[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """Pixels inside an odd number of the polygons of one slice (contours inside contours are holes).

    Each polygon is filled by :func:`fill_polygon` and the fills are XORed, as planning systems combine
    the contours of one ROI on one slice and ``plastimatch convert --xor-contours`` does.

    Args:
        polygons: (n, 2) arrays of (row, column) continuous pixel indices (the centre of pixel (i, j)
            is (i, j)), each an implicitly closed polygon.
        shape: (rows, columns) of the grid.

    Returns:
        Boolean (rows, columns) mask.
    """
    mask = np.zeros(shape, dtype=bool)
    for polygon in polygons:
        mask ^= fill_polygon(polygon, shape)
    return mask
