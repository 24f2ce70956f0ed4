"""Sharded memory bank on a real local Ray cluster equals the unsharded bank exactly."""

import numpy as np
import torch

from actors.modeling.bank import open_bank
from actors.vision_expert import ShardedSearcher, open_sharded_expert


def test_ray_shards_equal_unsharded(ray_cluster, tiny_cfg, tiny_bank):
    single, meta = open_bank(tiny_bank, tiny_cfg.expert, None)
    cfg = tiny_cfg.expert.model_copy(update={"shards": 3, "num_neighbours": 3})
    sharded, _ = open_sharded_expert(tiny_bank, cfg, None)
    single.cfg = cfg  # same k for the comparison
    try:
        assert isinstance(sharded.searcher, ShardedSearcher) and len(sharded.searcher.shards) == 3
        sizes = ray_cluster.get([s.info.remote() for s in sharded.searcher.shards])
        assert sum(s["size"] for s in sizes) == meta.size
        x = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(0))
        a, b = single.predict(x), sharded.predict(x)
        assert np.array_equal(a.scores, b.scores)
        assert np.array_equal(a.anomaly_maps, b.anomaly_maps)
        q = np.random.default_rng(0).normal(size=(300, meta.dim)).astype(np.float32)
        na, nb = single.searcher.search(q, 5), sharded.searcher.search(q, 5)
        assert np.array_equal(na.ids, nb.ids) and np.array_equal(na.distances, nb.distances)
    finally:
        sharded.searcher.close()
