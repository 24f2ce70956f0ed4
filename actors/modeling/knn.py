"""Nearest-neighbour search over a PatchCore memory bank, in FAISS.

The index type comes from ``IndexConfig`` (flat = exact L2, IVF, HNSW). Indexes are built
and saved on the CPU (FAISS's own index file format, no pickles) and moved to a GPU on load
when FAISS has CUDA support and the config allows it (patchcore-inspection ``FaissNN``).

Distances are squared L2. FAISS computes them through a GEMM expansion whose rounding
depends on how the bank is blocked, so a sharded bank would disagree with an unsharded one in
the last bits. Every index therefore takes ``RERANK_MARGIN`` extra candidates and re-scores
them exactly, pair by pair, from the stored vectors: the same numbers whatever the sharding
or index type (it also removes the distance error of compressed indexes).

A flat index on a CPU with native bfloat16 searches without FAISS by default
(``IndexConfig.flat_search``): a bf16 GEMM screens candidates under a rounding bound and the same
pair-by-pair float32 re-scoring decides (``actors.modeling.screen``), about 2x faster.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import NamedTuple, Protocol

import faiss
import numpy as np

from actors.modeling.screen import MAX_ROWS, Bf16Screen, bf16_native
from configs.schema import IndexConfig, IndexKind

log = logging.getLogger(__name__)

RERANK_MARGIN = 4  # extra candidates per query re-scored exactly


class Neighbours(NamedTuple):
    distances: np.ndarray  # (N, k) float32, squared L2, ascending
    ids: np.ndarray  # (N, k) int64, row ids into the memory bank


class Searcher(Protocol):
    """Anything that finds the k nearest memory-bank rows: one index or a set of shards."""

    def search(self, queries: np.ndarray, k: int) -> Neighbours: ...


def gpu_available() -> bool:
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def _want_gpu(cfg: IndexConfig) -> bool:
    if cfg.device == "cuda" and not gpu_available():
        raise RuntimeError("expert.index.device is 'cuda' but FAISS has no visible GPU")
    return cfg.device == "cuda" or (cfg.device == "auto" and gpu_available())


def _want_screen(cfg: IndexConfig, on_gpu: bool, rows: int) -> bool:
    if cfg.flat_search == "faiss" or cfg.kind is not IndexKind.flat or on_gpu or rows > MAX_ROWS:
        return False
    if cfg.flat_search == "bf16":
        return True
    return bf16_native()


def _new_index(cfg: IndexConfig, dim: int, n: int) -> faiss.Index:
    if cfg.kind is IndexKind.flat:
        return faiss.IndexFlatL2(dim)
    if cfg.kind is IndexKind.hnsw:
        index = faiss.IndexHNSWFlat(dim, cfg.hnsw_m)
        index.hnsw.efConstruction = cfg.hnsw_ef_construction
        index.hnsw.efSearch = cfg.hnsw_ef_search
        return index
    # IVF: FAISS wants ~39 training points per list; shrink nlist for small banks.
    nlist = max(1, min(cfg.ivf_nlist, n // 39))
    index = faiss.IndexIVFFlat(faiss.IndexFlatL2(dim), dim, nlist)
    index.nprobe = min(cfg.ivf_nprobe, nlist)
    return index


class MemoryIndex:
    """A FAISS index over (M, D) float32 vectors, CPU-built, optionally GPU-resident."""

    def __init__(self, index: faiss.Index, cfg: IndexConfig, vectors: np.ndarray) -> None:
        self.cfg = cfg
        self.vectors = vectors  # (M, D) float32, for exact re-scoring
        self.cpu_index = index
        self.index = index
        on_gpu = _want_gpu(cfg)
        if on_gpu:
            res = faiss.StandardGpuResources()
            self.index = faiss.index_cpu_to_gpu(res, 0, index)
            self._gpu_resources = res
            log.info("memory index moved to GPU")
        self.screen = Bf16Screen(vectors) if _want_screen(cfg, on_gpu, len(vectors)) else None

    @classmethod
    def build(cls, vectors: np.ndarray, cfg: IndexConfig) -> "MemoryIndex":
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or len(vectors) == 0:
            raise ValueError(f"memory bank must be a non-empty (M, D) array, got {vectors.shape}")
        index = _new_index(cfg, vectors.shape[1], len(vectors))
        if not index.is_trained:
            index.train(vectors)
        index.add(vectors)
        return cls(index, cfg, vectors)

    @property
    def ntotal(self) -> int:
        return int(self.cpu_index.ntotal)

    @property
    def dim(self) -> int:
        return int(self.cpu_index.d)

    def search(self, queries: np.ndarray, k: int) -> Neighbours:
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise ValueError(f"queries must be (N, {self.dim}), got {queries.shape}")
        k = min(k, self.ntotal)
        if self.screen is not None:
            return Neighbours(*self.screen.search(queries, k))
        _, ids = self.index.search(queries, min(k + RERANK_MARGIN, self.ntotal))
        return exact_topk(queries, self.vectors, ids.astype(np.int64), k)

    def save(self, path: Path) -> None:
        faiss.write_index(self.cpu_index, str(path))

    @classmethod
    def load(cls, path: Path, cfg: IndexConfig, vectors: np.ndarray) -> "MemoryIndex":
        index = faiss.read_index(str(path))
        if index.ntotal != len(vectors) or index.d != vectors.shape[1]:
            raise ValueError(f"{path}: index holds {index.ntotal}x{index.d}, vectors {vectors.shape}")
        return cls(index, cfg, np.ascontiguousarray(vectors, dtype=np.float32))


def exact_topk(queries: np.ndarray, vectors: np.ndarray, candidates: np.ndarray, k: int) -> Neighbours:
    """Re-score candidate ids (N, c) exactly against queries (N, D); keep the best k.

    Each distance is a plain float32 sum of squared differences of one (query, row) pair,
    so it does not depend on which other rows share the index.
    """
    safe = np.where(candidates >= 0, candidates, 0)
    diff = queries[:, None, :] - vectors[safe]  # (N, c, D)
    distances = np.square(diff).sum(axis=-1, dtype=np.float32)  # (N, c)
    distances = np.where(candidates >= 0, distances, np.inf).astype(np.float32)
    order = np.lexsort((candidates, distances), axis=1)[:, :k]
    return Neighbours(
        np.take_along_axis(distances, order, axis=1), np.take_along_axis(candidates, order, axis=1)
    )


def merge_neighbours(parts: list[Neighbours], k: int) -> Neighbours:
    """Exact top-k merge of per-shard results whose ids are already global.

    Ties in distance are broken by the smaller id, as a single flat index does.
    """
    distances = np.concatenate([p.distances for p in parts], axis=1)  # (N, sum k_i)
    ids = np.concatenate([p.ids for p in parts], axis=1)
    valid = ids >= 0
    distances = np.where(valid, distances, np.inf)
    order = np.lexsort((ids, distances), axis=1)[:, :k]  # primary key: distance
    return Neighbours(
        np.take_along_axis(distances, order, axis=1), np.take_along_axis(ids, order, axis=1)
    )


def shard_bounds(n: int, num_shards: int) -> list[tuple[int, int]]:
    """Contiguous [start, stop) row ranges splitting n rows into num_shards near-equal parts."""
    if num_shards < 1 or num_shards > max(n, 1):
        raise ValueError(f"cannot split {n} memory rows into {num_shards} shards")
    edges = np.linspace(0, n, num_shards + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:])]


class ShardedIndex:
    """In-process shards (the Ray version lives in ``actors.vision_expert``): same merge."""

    def __init__(self, vectors: np.ndarray, cfg: IndexConfig, num_shards: int) -> None:
        self.parts = [
            (start, MemoryIndex.build(vectors[start:stop], cfg))
            for start, stop in shard_bounds(len(vectors), num_shards)
        ]

    def search(self, queries: np.ndarray, k: int) -> Neighbours:
        results = []
        for start, index in self.parts:
            d, i = index.search(queries, k)
            results.append(Neighbours(d, np.where(i >= 0, i + start, -1)))
        return merge_neighbours(results, k)
