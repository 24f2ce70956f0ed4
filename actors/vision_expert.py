"""The PatchCore expert over a bank sharded across Ray actors.

``ShardedSearcher`` fans a query batch out to every shard concurrently (one object-store
copy of the queries) and merges the per-shard top-k exactly. ``open_sharded_expert`` builds
a ``PatchCore`` on top of it; serving wraps the same object in a deployment.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import ray

from actors.faiss_shard import RemoteFaissShard
from actors.modeling.bank import BankMeta, check_compatible, read_meta
from actors.modeling.errors import BankError
from actors.modeling.knn import Neighbours, merge_neighbours, shard_bounds
from actors.modeling.patchcore import PatchCore
from configs.schema import ExpertConfig

log = logging.getLogger(__name__)


class ShardedSearcher:
    """Search over shard actors; results equal a single index over the whole bank."""

    def __init__(self, shards: list) -> None:
        if not shards:
            raise ValueError("a sharded searcher needs at least one shard")
        self.shards = shards

    def search(self, queries: np.ndarray, k: int) -> Neighbours:
        ref = ray.put(np.ascontiguousarray(queries, dtype=np.float32))
        parts = ray.get([s.search.remote(ref, k) for s in self.shards])
        return merge_neighbours([Neighbours(*p) for p in parts], k)

    def close(self) -> None:
        for shard in self.shards:
            ray.kill(shard)
        self.shards = []


def start_shards(
    bank_dir: Path, cfg: ExpertConfig, num_shards: int, actor_options: dict | None = None
) -> list:
    """Start one ``FaissShard`` actor per row range; waits until all have loaded."""
    meta = read_meta(bank_dir)
    options = {"num_cpus": 0.1, **(actor_options or {})}
    try:
        bounds = shard_bounds(meta.size, num_shards)
    except ValueError as exc:
        raise BankError(f"{bank_dir}: {exc}") from None
    shards = [
        RemoteFaissShard.options(**options).remote(
            str(Path(bank_dir).resolve()), start, stop, cfg.index.model_dump(mode="json")
        )
        for start, stop in bounds
    ]
    ray.get([s.info.remote() for s in shards])
    return shards


def open_sharded_expert(
    bank_dir: Path, cfg: ExpertConfig, weights_dir: Path | None, actor_options: dict | None = None
) -> tuple[PatchCore, BankMeta]:
    bank_dir = Path(bank_dir)
    meta = read_meta(bank_dir)
    check_compatible(meta, cfg, bank_dir)
    searcher = ShardedSearcher(start_shards(bank_dir, cfg, cfg.shards, actor_options))
    return PatchCore(cfg, weights_dir, searcher), meta
