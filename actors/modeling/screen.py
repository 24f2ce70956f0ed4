"""Exact flat k-NN on CPUs with native bfloat16: a bf16 GEMM screens, float32 decides.

FAISS's flat search is one float32 GEMM and runs at the cores' float32 peak (6,272 patch
queries x 2,509 bank rows x 152 dims: 22 ms on 2 cores). CPUs with AVX512-BF16 or AMX do
the same GEMM in bfloat16 about 5x faster, but bfloat16 keeps 8 significant bits, so those
distances are approximate. Here they only choose candidates, under an error bound that
makes the result exact:

* Queries and rows are centred on the bank mean (distances do not change, the dot products
  that the rounding scales with shrink), and one GEMM of
  ``a = [-2 q~, 1, 1, |q|^2 in two bf16 parts]`` with ``b = [x~, |x|^2 in two parts,
  1, 1]`` gives ``o ~ |q - x|^2`` directly, so the output rounding is relative to the
  distance itself, not to the norms.
* ``|q.x - q~.x~| <= |q - q~| |x| + |q~| |x - x~|`` (Cauchy-Schwarz). With ``|x|`` and
  ``|x - x~|`` at their bank maxima this gives one bound ``e`` per query; float32
  accumulation, the norm splits and the centring add a term ``ACC * (|q| + max|x|)^2``; the
  bf16 output and the float32 re-scoring add the relative ``SLACK``.
* The k-th smallest ``o`` bounds the k-th true distance from above; any row whose lower
  bound exceeds that is out. The rest (1-3 per query on the texture benchmark) are
  re-scored with ``exact_topk``'s float32 arithmetic and ranked by (distance, id), so the
  answer is the one a brute-force float32 search gives, bit for bit (``tests/actors/
  test_screen.py`` checks it against FAISS plus exact re-scoring, including banks of
  near-duplicates that bf16 cannot tell apart).
"""

from __future__ import annotations

import numpy as np
import torch

SLACK = 2.0**-6  # >= bf16 output rounding (2^-8) + float32 re-scoring (~D * 2^-24)
ACC = 1e-4  # x (|q| + max|x|)^2: float32 accumulation (~(D + 4) * 2^-24), norm splits
# (2^-16 of |q|^2 and |x|^2), centring
PAIR_CHUNK = 1 << 16  # candidate pairs re-scored at a time (bounds the temporary memory)
GROUP = 64  # bank rows per group: whole groups are screened out by their minimum first
FAR = 1e30  # the distance the GEMM gives the padding rows that fill the last group
MAX_ROWS = 1 << 20  # larger banks keep FAISS (a block of 64 queries would hold 256 MB of scores)


def bf16_native() -> bool:
    """Whether oneDNN has native bfloat16 GEMMs on this CPU (AVX512-BF16 / AMX)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def _split2(n: torch.Tensor) -> torch.Tensor:
    """(N,) float32 -> (N, 2) bfloat16 whose sum is n to ~2^-16 relative."""
    hi = n.to(torch.bfloat16)
    return torch.stack([hi, (n - hi.float()).to(torch.bfloat16)], 1)


def pair_distances(
    queries: np.ndarray, vectors: np.ndarray, rows: np.ndarray, cols: np.ndarray
) -> np.ndarray:
    """Float32 squared L2 of pairs (queries[rows], vectors[cols]), as ``exact_topk`` sums them."""
    out = np.empty(len(rows), np.float32)
    for a in range(0, len(rows), PAIR_CHUNK):
        diff = queries[rows[a : a + PAIR_CHUNK]] - vectors[cols[a : a + PAIR_CHUNK]]
        out[a : a + PAIR_CHUNK] = np.square(diff).sum(axis=-1, dtype=np.float32)
    return out


class Bf16Screen:
    """Exact k nearest rows of a float32 (M, D) bank, screened by a bf16 GEMM (module doc)."""

    def __init__(self, vectors: np.ndarray) -> None:
        self.vectors = vectors
        v = torch.from_numpy(vectors if vectors.flags.writeable else vectors.copy())
        self.mean = v.mean(0)
        xc = v - self.mean
        xb = xc.bfloat16()
        # Bank-wide maxima, rounded up a little (norms are computed in float32).
        self.x_norm = float(xc.norm(dim=1).max()) * 1.001
        self.x_err = float((xc - xb.float()).norm(dim=1).max()) * 1.001
        ones = torch.ones(len(v), 2, dtype=torch.bfloat16)
        bank = torch.cat([xb, _split2(xc.square().sum(1)), ones], 1)  # (M, D + 4)
        pad = torch.zeros(-len(v) % GROUP, bank.shape[1], dtype=torch.bfloat16)
        pad[:, -4] = FAR  # |x|^2 = FAR: never a candidate
        self.bank_t = torch.cat([bank, pad]).T.contiguous()  # (D + 4, M rounded up to GROUP)
        # <= 512 queries or ~2M scores (8 MB float32) per block: the passes over the scores
        # stay in cache (measured best at 256-512 for 2,509 rows), memory stays bounded.
        self.block = max(64, min(512, (1 << 21) // len(v)))

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(N, D) float32 -> distances (N, k) float32 ascending, ids (N, k) int64."""
        n, m = len(queries), len(self.vectors)
        k = min(k, m)
        dist = np.empty((n, k), np.float32)
        ids = np.empty((n, k), np.int64)
        q_all = torch.from_numpy(queries if queries.flags.writeable else queries.copy())
        for s in range(0, n, self.block):
            q = q_all[s : s + self.block]
            rows, cols = self._candidates(q, k)
            d = pair_distances(queries[s : s + len(q)], self.vectors, rows, cols)
            order = np.lexsort((cols, d, rows))  # by query, then distance, then id
            rows, cols, d = rows[order], cols[order], d[order]
            first = np.searchsorted(rows, np.arange(len(q)))
            rank = np.arange(len(rows)) - first[rows]
            keep = rank < k
            dist[s + rows[keep], rank[keep]] = d[keep]
            ids[s + rows[keep], rank[keep]] = cols[keep]
        return dist, ids

    def _candidates(self, q: torch.Tensor, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(query, row) pairs that can be among each query's k nearest, grouped by query."""
        qc = q - self.mean
        qb = qc.bfloat16()
        q_norm = qc.norm(dim=1)
        ones = torch.ones(len(q), 2, dtype=torch.bfloat16)
        a = torch.cat([qb * -2, ones, _split2(q_norm.square())], 1)
        o = (a @ self.bank_t).float()  # (b, M') ~ squared distances
        e = 1.01 * 2 * ((qc - qb.float()).norm(dim=1) * self.x_norm + qb.float().norm(dim=1) * self.x_err)
        e = e + ACC * (q_norm + self.x_norm) ** 2
        groups = o.view(len(q), -1, GROUP)
        group_min = groups.amin(2)  # (b, M' / GROUP)
        # The k smallest group minima belong to k distinct rows: their largest bounds the k-th
        # true distance from above (loosely for k > 1, which only adds candidates).
        if k == 1:
            kth = group_min.amin(1)
        elif k <= group_min.shape[1]:
            kth = group_min.topk(k, 1, largest=False).values[:, -1]
        else:
            kth = o.topk(k, 1, largest=False).values[:, -1]
        upper = (kth + SLACK * kth.abs() + e).clamp_min(0)  # >= the k-th true distance
        limit = (upper + e) * (1 + SLACK)  # rows above it are farther than ``upper``
        g_rows, g_ids = (group_min <= limit[:, None]).nonzero(as_tuple=True)
        r, c = (groups[g_rows, g_ids] <= limit[g_rows, None]).nonzero(as_tuple=True)
        rows, cols = g_rows[r], g_ids[r] * GROUP + c
        keep = cols < len(self.vectors)  # padding rows only pass for an infinite limit
        rows, cols = rows[keep], cols[keep]
        rows, cols = rows.numpy(), cols.numpy()
        short = np.bincount(rows, minlength=len(q)) < k  # non-finite queries: score every row
        if short.any():
            extra = np.flatnonzero(short)
            m = len(self.vectors)
            keep = ~short[rows]
            rows = np.concatenate([rows[keep], np.repeat(extra, m)])
            cols = np.concatenate([cols[keep], np.tile(np.arange(m), len(extra))])
        return rows.astype(np.int64), cols.astype(np.int64)
