"""Greedy k-center coreset selection (PatchCore, Roth et al. 2022, section 3.2).

Memory is linear in the number of patches: the features (N, D) are randomly projected to
``projection_dim`` (Johnson-Lindenstrauss), and the loop keeps one (N,) vector of distances
to the nearest selected centre, updated with one matrix-vector product per step. Nothing of
size N x M or N x N is ever allocated (anomalib's variant is reported to reach 100 GB).
"""

from __future__ import annotations

import torch


def greedy_coreset(
    features: torch.Tensor, n_select: int, projection_dim: int = 128, seed: int = 0
) -> torch.Tensor:
    """Indices (n_select,) of a greedy k-center coreset of ``features`` (N, D).

    Example:
        >>> f = torch.randn(1000, 64)
        >>> greedy_coreset(f, 100).shape
        torch.Size([100])
    """
    n, dim = features.shape
    if n_select >= n:
        return torch.arange(n)
    if n_select < 1:
        raise ValueError("n_select must be >= 1")
    gen = torch.Generator().manual_seed(seed)
    feats = features.float()
    if 0 < projection_dim < dim:
        proj = torch.randn(dim, projection_dim, generator=gen) / projection_dim**0.5
        feats = feats @ proj  # (N, P)
    sq = (feats * feats).sum(1)  # (N,)
    selected = torch.empty(n_select, dtype=torch.long)
    start = int(torch.randint(n, (1,), generator=gen))
    selected[0] = start
    # min squared distance of every point to the selected set: (N,)
    # ||a - c||^2 = ||a||^2 - 2 a.c + ||c||^2; the constant ||c||^2 is added after the
    # fused matrix-vector product (one addmv per step, ~10x faster than a norm of differences).
    min_d = torch.addmv(sq, feats, feats[start], alpha=-2.0).add_(sq[start])
    min_d[start] = 0
    d = torch.empty_like(min_d)
    for i in range(1, n_select):
        idx = int(torch.argmax(min_d))
        selected[i] = idx
        torch.addmv(sq, feats, feats[idx], alpha=-2.0, out=d)  # (N,)
        d.add_(sq[idx])
        torch.minimum(min_d, d, out=min_d)
        min_d[idx] = 0
    return selected
