"""The bf16-screened flat search returns exactly what FAISS plus float32 re-scoring returns."""

import warnings

import numpy as np
import pytest

from actors.modeling.knn import MemoryIndex, exact_topk
from actors.modeling.screen import GROUP, Bf16Screen
from configs.schema import IndexConfig

FAISS = IndexConfig(device="cpu", flat_search="faiss")
SCREEN = IndexConfig(device="cpu", flat_search="bf16")


def _banks():
    rng = np.random.default_rng(0)
    gauss = rng.normal(size=(3000, 48)).astype(np.float32), rng.normal(size=(700, 48)).astype(np.float32)
    # Far from the origin, in tight clusters of near-duplicates that bf16 cannot tell apart:
    # many candidates per query, and the centring and the bound both matter.
    centres = rng.normal(scale=5.0, size=(20, 32)) + 300.0
    near = (centres[rng.integers(0, 20, 2000)] + rng.normal(scale=1e-3, size=(2000, 32))).astype(np.float32)
    near_q = (centres[rng.integers(0, 20, 300)] + rng.normal(scale=1e-3, size=(300, 32))).astype(np.float32)
    # Exact duplicate rows: ties are broken by the smaller id, as FAISS's flat index does.
    dup = np.repeat(rng.normal(size=(150, 16)).astype(np.float32), 3, axis=0)
    dup_q = dup[::7] + np.float32(0.0)
    # Fewer rows than one screening group, and fewer than k.
    tiny = rng.normal(size=(5, 8)).astype(np.float32), rng.normal(size=(40, 8)).astype(np.float32)
    return {"gauss": gauss, "near_duplicates": (near, near_q), "duplicates": (dup, dup_q), "tiny": tiny}


BANKS = _banks()


@pytest.mark.parametrize("name", sorted(BANKS))
@pytest.mark.parametrize("k", [1, 3, 7])
def test_screen_equals_faiss_bit_for_bit(name, k):
    vectors, queries = BANKS[name]
    want = MemoryIndex.build(vectors, FAISS).search(queries, k)
    index = MemoryIndex.build(vectors, SCREEN)
    assert index.screen is not None
    got = index.search(queries, k)
    assert np.array_equal(got.ids, want.ids)
    assert np.array_equal(got.distances, want.distances)


@pytest.mark.parametrize("name", ["near_duplicates", "duplicates"])
def test_screen_equals_brute_force(name):
    vectors, queries = BANKS[name]
    everything = np.tile(np.arange(len(vectors)), (len(queries), 1))
    want = exact_topk(queries, vectors, everything, 2)
    dist, ids = Bf16Screen(vectors).search(queries, 2)
    assert np.array_equal(ids, want.ids) and np.array_equal(dist, want.distances)


def test_small_blocks_and_partial_group():
    vectors, queries = BANKS["gauss"]
    screen = Bf16Screen(vectors[: GROUP * 3 + 5])
    screen.block = 37  # many blocks, the last one short
    dist, ids = screen.search(queries, 2)
    want = MemoryIndex.build(vectors[: GROUP * 3 + 5], FAISS).search(queries, 2)
    assert np.array_equal(ids, want.ids) and np.array_equal(dist, want.distances)
    assert ids.max() < GROUP * 3 + 5  # padding rows are never returned


def test_non_finite_query_does_not_disturb_the_others():
    vectors, queries = BANKS["gauss"]
    bad = queries[:10].copy()
    bad[3, 5] = np.nan
    bad[6, 0] = np.inf
    dist, ids = Bf16Screen(vectors).search(bad, 1)
    want = MemoryIndex.build(vectors, FAISS).search(bad[[0, 1, 2, 4, 5, 7, 8, 9]], 1)
    good = [0, 1, 2, 4, 5, 7, 8, 9]
    assert np.array_equal(ids[good], want.ids) and np.array_equal(dist[good], want.distances)
    assert ((ids >= 0) & (ids < len(vectors))).all()
    assert not np.isfinite(dist[[3, 6]]).any()


def test_read_only_inputs_are_accepted_without_copy_warnings():
    vectors, queries = (a.copy() for a in BANKS["gauss"])
    vectors.flags.writeable = False
    queries.flags.writeable = False
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        index = MemoryIndex.build(vectors, SCREEN)
        index.search(queries, 1)


def test_screen_only_for_flat_cpu_indexes():
    vectors, _ = BANKS["gauss"]
    assert MemoryIndex.build(vectors, FAISS).screen is None
    hnsw = IndexConfig(device="cpu", kind="hnsw", flat_search="bf16")
    assert MemoryIndex.build(vectors, hnsw).screen is None
