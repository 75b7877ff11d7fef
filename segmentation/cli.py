"""Console entry points: ``bm-segment`` and ``bm-train``."""

from __future__ import annotations

from collections.abc import Sequence


def train_main(argv: Sequence[str] | None = None) -> int:
    """``bm-train``: see :mod:`segmentation.train`."""
    from segmentation.train import main

    return main(argv)
