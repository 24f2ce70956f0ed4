"""Fit the TPG gate's starting thresholds to training maps (``train.data.fit_gate``).

The gate names a grid cell when the map's peak passes ``t`` and the cell holds at least ``s``
of the map's mass above a base a fraction ``a`` of the way from the map's median to its peak
(``actors.modeling.tpg``). All three are learned, but from a weak signal: over a 400-step run
they move by a few hundredths from wherever they start. So before step 0 the trainer draws
``fit_gate_samples`` synthetic samples of their own (ids apart from the training and eval
ids), with maps from the same cross-fitted banks, and picks the (t, s, a) whose *hard* rule
best reproduces each sample's answer: the mask's grid positions on a defect, no cell on a
normal image. On 512 training maps of the texture benchmark (2 expert folds), the best
fixed-base rule (base = t = 0.5, s = 0.1) was exact on 0.896 of the samples and 0.793 of the
defects; the peak-relative base (t 0.5, s 0.1, a 0.45) on 0.924 and 0.848. With 8 folds the
training normals' maps run cooler, like unseen normals', and the fit lowers t to 0.475
(closing note #4).

Example::

    t, s, a, acc = fit_gate(maps, positions)     # maps (N, H, W) in [0, 1]; positions per sample
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch

from actors.modeling.grid import GRID_LABELS
from actors.modeling.tpg import cell_shares

log = logging.getLogger(__name__)

GATE_ID_OFFSET = 2_000_000_000  # gate-fit ids never collide with training or eval ids
T_GRID = tuple(np.round(np.arange(0.30, 0.701, 0.025), 3))
S_GRID = tuple(np.round(np.arange(0.05, 0.401, 0.025), 3))
A_GRID = tuple(np.round(np.arange(0.0, 0.801, 0.05), 3))


def cell_rule(maps: torch.Tensor, t: float, s: float, a: float, grid: int = 3) -> torch.Tensor:
    """(N, 1, H, W) maps -> (N, grid**2) bool: the gate's hard rule at (t, s, a)."""
    peak = maps.flatten(1).amax(dim=1, keepdim=True)  # (N, 1)
    return (peak > t) & (cell_shares(maps, a, grid) >= s)


def fit_gate(maps: np.ndarray, positions: Sequence[Sequence[str]], grid: int = 3,
             default: tuple[float, float, float] = (0.5, 0.1, 0.45)) -> tuple[float, float, float, float]:
    """The (t, s, a) on ``T_GRID`` x ``S_GRID`` x ``A_GRID`` whose rule matches the most
    samples exactly.

    Args:
        maps: (N, H, W) normalized maps in [0, 1] (``patchcore.lmm_map``).
        positions: each sample's grid labels (``GRID_LABELS``); empty for a normal image.
        default: the starting triple; ties go to the triple nearest it.

    Returns:
        (t, s, a, accuracy): the gate's starting values and the share of samples the rule gets
        exactly right.
    """
    if grid != 3:
        raise ValueError(f"fit_gate knows the 3x3 grid labels only, got grid {grid}")
    if len(maps) == 0 or len(maps) != len(positions):
        raise ValueError(f"need as many maps as position lists, got {len(maps)} and {len(positions)}")
    index = {label: i for i, label in enumerate(GRID_LABELS)}
    truth = torch.zeros(len(positions), grid * grid, dtype=torch.bool)  # (N, 9)
    for n, labels in enumerate(positions):
        for label in labels:
            truth[n, index[label]] = True
    x = torch.as_tensor(np.asarray(maps, np.float32))[:, None]  # (N, 1, H, W)
    peak = x.flatten(1).amax(dim=1, keepdim=True)  # (N, 1)
    best = None
    for a in sorted({*A_GRID, default[2]}):
        shares = cell_shares(x, a, grid)  # the costly part: once per base
        for t in T_GRID:
            on = peak > t
            for s in S_GRID:
                acc = float(((on & (shares >= s)) == truth).all(dim=1).float().mean())
                key = (acc, -abs(t - default[0]) - abs(s - default[1]) - abs(a - default[2]))
                if best is None or key > best[0]:
                    best = (key, float(t), float(s), float(a), acc)
    _, t, s, a, acc = best
    at_default = float((cell_rule(x, *default, grid) == truth).all(dim=1).float().mean())
    log.info("TPG gate fit on %d maps: t %.3f s %.3f a %.3f (rule exact on %.3f; %.3f at %s)",
             len(maps), t, s, a, acc, at_default, default)
    return t, s, a, acc
