"""A Ray actor holding one shard of a PatchCore memory bank as a FAISS index.

The shard reads only its own row range of the bank's ``memory.safetensors`` and answers
k-nearest-neighbour queries with global row ids, re-scored exactly (``actors.modeling.knn``),
so merging shards gives exactly the unsharded answer.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import ray

from actors.modeling.bank import load_vectors
from actors.modeling.knn import MemoryIndex, Neighbours
from configs.schema import IndexConfig


class FaissShard:
    """Rows [start, stop) of a bank. Create with ``ray.remote(FaissShard).options(...)``."""

    def __init__(self, bank_dir: str, start: int, stop: int, index_cfg: dict) -> None:
        self.start, self.stop = start, stop
        cfg = IndexConfig.model_validate(index_cfg)
        self.index = MemoryIndex.build(load_vectors(Path(bank_dir), start, stop), cfg)

    def search(self, queries: np.ndarray, k: int) -> Neighbours:
        d, i = self.index.search(queries, k)
        return Neighbours(d, np.where(i >= 0, i + self.start, -1))

    def info(self) -> dict:
        return {"start": self.start, "stop": self.stop, "size": self.index.ntotal}


RemoteFaissShard = ray.remote(FaissShard)
