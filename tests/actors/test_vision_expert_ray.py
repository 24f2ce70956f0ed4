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


def test_line_expert_map_is_the_lmm_map_whatever_the_live_threshold(ray_cluster, tiny_cfg, tiny_bank):
    """The deployment's map is what training fed the LMM (the bank's own threshold, centred);
    a live threshold, even one under the bank's normal level, changes only the verdict."""
    from actors.expert_deployment import LineExpert
    from actors.modeling.patchcore import lmm_map
    from actors.modeling.preprocess import to_batch

    line = LineExpert("l1", str(tiny_bank), tiny_cfg.expert.model_dump(mode="json"), ".", {}, None)
    try:
        image = np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8)
        raw = line.expert.predict(to_batch([image], line.size, *line.expert.mean_std))
        want = lmm_map(raw.anomaly_maps[0], line.meta.threshold, line.meta.normal_level)
        base = line.predict(image, None)
        low = line.predict(image, line.meta.normal_level / 2)
        assert np.array_equal(base["map"], want) and np.array_equal(low["map"], want)
        assert low["anomalous"] is True and low["threshold"] == line.meta.normal_level / 2
    finally:
        line.expert.searcher.close()
