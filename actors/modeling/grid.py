"""The 3x3 position grid used by the prompt template ("a defect at the top left ...").

An image of height ``h`` and width ``w`` is cut into 3 rows and 3 columns; pixel ``(y, x)``
lies in row ``3 * y // h`` and column ``3 * x // w`` (row-major labels in ``GRID_LABELS``).
Both :func:`position_of_point` and :func:`mask_to_positions` use this same rule, so a mask's
cells and a point's cell always agree.

Example::

    >>> m = np.zeros((90, 90), bool); m[0:10, 0:10] = True
    >>> mask_to_positions(m)
    ['top left']

Plain numpy: shared by serving (verdict text) and training (instruction targets).
"""

from __future__ import annotations

import logging

import numpy as np

log = logging.getLogger(__name__)

GRID_LABELS: tuple[str, ...] = (
    "top left", "top", "top right",
    "left", "center", "right",
    "bottom left", "bottom", "bottom right",
)
"""Row-major cell names: index ``3 * row + col``."""

DEFAULT_MIN_FRACTION = 0.1
"""A cell counts when it holds at least this share of the mask's pixels."""


def cell_index(y: float, x: float, h: int, w: int) -> int:
    """Row-major index (0..8) of the grid cell holding point ``(y, x)`` of an ``h x w`` image."""
    if h <= 0 or w <= 0:
        raise ValueError(f"image size must be positive, got h={h}, w={w}")
    if not (0 <= y < h and 0 <= x < w):
        raise ValueError(f"point (y={y}, x={x}) lies outside the {h}x{w} image")
    row = min(int(3 * y // h), 2)
    col = min(int(3 * x // w), 2)
    return 3 * row + col


def position_of_point(y: float, x: float, h: int, w: int) -> str:
    """Grid label of the cell holding point ``(y, x)`` (pixel coordinates) of an ``h x w`` image."""
    return GRID_LABELS[cell_index(y, x, h, w)]


def cell_counts(mask: np.ndarray) -> np.ndarray:
    """Number of mask pixels in each grid cell.

    Args:
        mask: (H, W) binary mask (any dtype; non-zero counts).

    Returns:
        (9,) int64 counts in ``GRID_LABELS`` order.
    """
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D (H, W), got shape {mask.shape}")
    h, w = mask.shape
    m = mask.astype(bool)
    rows = np.minimum(3 * np.arange(h) // h, 2)  # (H,) row of each pixel row
    cols = np.minimum(3 * np.arange(w) // w, 2)  # (W,)
    per_row = np.stack([m[:, cols == c].sum(axis=1) for c in range(3)], axis=1)  # (H, 3)
    counts = np.stack([per_row[rows == r].sum(axis=0) for r in range(3)], axis=0)  # (3, 3)
    return counts.reshape(9).astype(np.int64)


def mask_to_positions(mask: np.ndarray, min_fraction: float = DEFAULT_MIN_FRACTION) -> list[str]:
    """Grid cells a binary mask covers, in ``GRID_LABELS`` (row-major) order.

    Rule: a cell counts when it holds at least ``min_fraction`` of the mask's pixels; the cell
    holding the most mask pixels always counts, so a non-empty mask has at least one position
    (a thin scratch crossing many cells lists each cell it meaningfully crosses). With
    ``min_fraction=0`` every cell touched by at least one pixel counts. An empty mask gives
    ``[]``.

    Args:
        mask: (H, W) binary mask (any dtype; non-zero is defect).
        min_fraction: share of the mask's pixels a cell must hold, in [0, 1].
    """
    if not 0.0 <= min_fraction <= 1.0:
        raise ValueError(f"min_fraction must be in [0, 1], got {min_fraction}")
    counts = cell_counts(mask)  # (9,)
    total = int(counts.sum())
    if total == 0:
        return []
    keep = counts >= max(min_fraction * total, 1e-9)
    keep[int(np.argmax(counts))] = True
    return [GRID_LABELS[i] for i in np.flatnonzero(keep)]
