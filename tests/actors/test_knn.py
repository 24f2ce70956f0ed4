import numpy as np
import pytest

from actors.modeling.knn import MemoryIndex, Neighbours, ShardedIndex, merge_neighbours, shard_bounds
from configs.schema import IndexConfig


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    return rng.normal(size=(3000, 48)).astype(np.float32), rng.normal(size=(500, 48)).astype(np.float32)


def _brute(vectors, queries, k):
    d = ((queries[:, None, :].astype(np.float64) - vectors[None]) ** 2).sum(-1)
    return np.argsort(d, axis=1)[:, :k]


def test_flat_is_exact(data):
    vectors, queries = data
    res = MemoryIndex.build(vectors, IndexConfig(device="cpu")).search(queries, 3)
    assert np.array_equal(res.ids, _brute(vectors, queries, 3))
    assert np.all(np.diff(res.distances, axis=1) >= 0)


@pytest.mark.parametrize("shards", [2, 3, 7])
@pytest.mark.parametrize("k", [1, 4])
def test_sharded_equals_unsharded_bit_for_bit(data, shards, k):
    vectors, queries = data
    cfg = IndexConfig(device="cpu")
    one = MemoryIndex.build(vectors, cfg).search(queries, k)
    many = ShardedIndex(vectors, cfg, shards).search(queries, k)
    assert np.array_equal(one.ids, many.ids)
    assert np.array_equal(one.distances, many.distances)


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_approximate_indexes_save_and_load(data, kind, tmp_path):
    vectors, queries = data
    cfg = IndexConfig(kind=kind, device="cpu", ivf_nprobe=64, hnsw_ef_search=128)
    index = MemoryIndex.build(vectors, cfg)
    res = index.search(queries, 1)
    recall = (res.ids[:, 0] == _brute(vectors, queries, 1)[:, 0]).mean()
    assert recall > 0.8
    index.save(tmp_path / "i.faiss")
    again = MemoryIndex.load(tmp_path / "i.faiss", cfg, vectors).search(queries, 1)
    assert np.array_equal(again.ids, res.ids)
    # re-scored distances are exact for whatever ids were found
    exact = ((queries - vectors[res.ids[:, 0]]) ** 2).sum(1)
    assert np.allclose(res.distances[:, 0], exact, rtol=1e-5)


def test_merge_breaks_ties_by_id_and_skips_missing():
    a = Neighbours(np.array([[1.0, 2.0]], np.float32), np.array([[5, 9]]))
    b = Neighbours(np.array([[1.0, np.inf]], np.float32), np.array([[3, -1]]))
    merged = merge_neighbours([a, b], 3)
    assert merged.ids.tolist() == [[3, 5, 9]]


def test_shard_bounds():
    assert shard_bounds(10, 3) == [(0, 3), (3, 7), (7, 10)]
    with pytest.raises(ValueError):
        shard_bounds(2, 3)


def test_bad_queries(data):
    vectors, _ = data
    index = MemoryIndex.build(vectors, IndexConfig(device="cpu"))
    with pytest.raises(ValueError, match=r"queries must be \(N, 48\)"):
        index.search(np.zeros((2, 5), np.float32), 1)
    with pytest.raises(ValueError, match="non-empty"):
        MemoryIndex.build(np.zeros((0, 4), np.float32), IndexConfig(device="cpu"))
