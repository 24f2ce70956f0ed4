"""Synthetic defects: masks match the changed pixels, sizes, visibility, determinism, Poisson."""

import numpy as np
import pytest
from scipy import ndimage
from skimage import data as skdata

from actors.modeling.grid import GRID_LABELS, mask_to_positions, position_of_point
from training.anomaly_synthesis import (
    DEFECT_KINDS,
    GENERATORS,
    SynthConfig,
    SynthResult,
    cut_paste,
    hole,
    poisson_blend,
    random_blob,
    synthesize,
)

BLOB_KINDS = ("hole", "stain", "cut_paste", "color_shift")


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    """(128, 128, 3) uint8: a tinted crop of scikit-image's real gravel photo."""
    gray = skdata.gravel()[:128, 128:256].astype(np.float32)
    return np.clip(gray[..., None] * [1.0, 0.9, 0.8], 0, 255).astype(np.uint8)


def _diff(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.abs(a.astype(int) - b.astype(int)).max(axis=2)  # (H, W)


def test_kinds_registry():
    assert set(GENERATORS) == set(DEFECT_KINDS) == {
        "scratch", "hole", "stain", "cut_paste", "color_shift"}


@pytest.mark.parametrize("kind", DEFECT_KINDS)
def test_every_kind_changes_exactly_its_mask(image, kind):
    rng = np.random.default_rng(1)
    for _ in range(6):
        res = GENERATORS[kind](image, rng)
        assert isinstance(res, SynthResult) and res.kind == kind
        assert res.image.shape == image.shape and res.image.dtype == np.uint8
        assert res.mask.shape == image.shape[:2] and res.mask.dtype == bool
        assert res.mask.sum() >= 9
        diff = _diff(res.image, image)
        near = ndimage.binary_dilation(res.mask, iterations=6)
        assert not (diff[~near] > 0).any(), "pixels changed far outside the mask"
        assert diff[res.mask].mean() >= 20, "defect too faint to see"
        assert (diff[res.mask] > 8).mean() >= 0.6, "most of the mask must visibly change"
        assert res.positions == mask_to_positions(res.mask) and res.positions
    assert not np.shares_memory(res.image, image)


@pytest.mark.parametrize("kind", DEFECT_KINDS)
def test_deterministic_given_the_generator(image, kind):
    a = GENERATORS[kind](image, np.random.default_rng(7))
    b = GENERATORS[kind](image, np.random.default_rng(7))
    c = GENERATORS[kind](image, np.random.default_rng(8))
    assert np.array_equal(a.image, b.image) and np.array_equal(a.mask, b.mask)
    assert a.positions == b.positions
    assert not np.array_equal(a.mask, c.mask)


@pytest.mark.parametrize("kind", BLOB_KINDS)
def test_blob_area_within_configured_bounds(image, kind):
    cfg = SynthConfig(area_range=(0.01, 0.03))
    rng = np.random.default_rng(2)
    areas = [GENERATORS[kind](image, rng, config=cfg, center=(64.0, 64.0)).mask.mean()
             for _ in range(8)]
    assert min(areas) >= 0.01 * 0.7 and max(areas) <= 0.03 * 1.02
    big = GENERATORS[kind](image, rng, config=SynthConfig(area_range=(0.1, 0.1)),
                           center=(64.0, 64.0)).mask.mean()
    assert 0.07 <= big <= 0.102


def test_blobs_are_irregular_and_connected():
    rng = np.random.default_rng(3)
    for _ in range(10):
        m = random_blob(200, 200, 1500, rng, center=(100.0, 100.0))
        assert ndimage.label(m)[1] == 1
        filled_box = np.ptp(np.nonzero(m)[0]) * np.ptp(np.nonzero(m)[1])
        assert m.sum() < 0.9 * filled_box  # not a square


def test_scratch_is_thin(image):
    rng = np.random.default_rng(4)
    for _ in range(5):
        m = GENERATORS["scratch"](image, rng, center=(64.0, 64.0)).mask
        # a stroke at most 5 px wide: no 7 px disk fits inside it
        disk = np.hypot(*np.mgrid[-3:4, -3:4]) <= 3
        assert not ndimage.binary_erosion(m, structure=disk).any()
        assert m.sum() >= 0.2 * 128 * 3 / 2


def test_defects_reach_every_grid_cell(image):
    rng = np.random.default_rng(5)
    seen = set()
    for _ in range(60):
        seen.update(synthesize(image, rng).positions)
    assert seen == set(GRID_LABELS)


def test_center_places_the_defect(image):
    rng = np.random.default_rng(6)
    for kind in DEFECT_KINDS:
        for cy, cx in [(5.0, 5.0), (64.0, 120.0), (125.0, 60.0)]:
            res = GENERATORS[kind](image, rng, center=(cy, cx))
            assert res.mask[max(int(cy) - 3, 0):int(cy) + 4, max(int(cx) - 3, 0):int(cx) + 4].any()
            assert position_of_point(cy, cx, 128, 128) in res.positions
    with pytest.raises(ValueError, match="outside"):
        hole(image, rng, center=(200.0, 5.0))


def test_poisson_blend_is_seamless_for_an_offset_source():
    rng = np.random.default_rng(0)
    target = rng.uniform(50, 150, (40, 50, 3))
    mask = np.zeros((40, 50), bool)
    mask[10:30, 5:45] = True
    mask[0:5, 0:8] = True  # touches the array edge: Neumann condition there
    same = poisson_blend(target, target, mask)
    np.testing.assert_allclose(same, target, atol=1e-3)
    shifted = poisson_blend(target, target + 60.0, mask)  # same gradients, other level
    np.testing.assert_allclose(shifted, target, atol=1e-3)
    yy, xx = np.mgrid[0:40, 0:50]
    bump = 100 * np.exp(-((yy - 20) ** 2 + (xx - 25) ** 2) / 30.0)[..., None].repeat(3, 2)
    out = poisson_blend(np.zeros((40, 50, 3)), bump, mask)
    assert np.array_equal(out[~mask], np.zeros((40, 50, 3))[~mask])
    assert out[20, 25, 0] > 80 and abs(out[11, 6, 0]) < 5  # the bump is carried inside


@pytest.mark.parametrize("blend", ["alpha", "poisson"])
def test_cut_paste_blends_and_sources(image, blend):
    other = np.ascontiguousarray(image[::-1, ::-1, ::-1])
    rng = np.random.default_rng(9)
    res = cut_paste(image, rng, blend=blend, source=other)
    diff = _diff(res.image, image)
    assert diff[res.mask].mean() >= 15
    if blend == "poisson":  # Poisson only writes inside the mask
        assert not (diff[~res.mask] > 0).any()
    with pytest.raises(ValueError, match="blend"):
        cut_paste(image, rng, blend="median")


def test_synthesize_draws_from_the_given_kinds(image):
    rng = np.random.default_rng(10)
    kinds = [synthesize(image, rng).kind for _ in range(40)]
    assert set(kinds) == set(DEFECT_KINDS)
    assert {synthesize(image, rng, kinds=["stain"]).kind for _ in range(3)} == {"stain"}
    with pytest.raises(ValueError, match="unknown defect kinds"):
        synthesize(image, rng, kinds=["smudge"])


def test_bad_inputs(image):
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="RGB uint8"):
        synthesize(image[..., 0], rng)
    with pytest.raises(ValueError, match="RGB uint8"):
        synthesize(image.astype(np.float32), rng)
    with pytest.raises(ValueError, match="area_range"):
        SynthConfig(area_range=(0.1, 0.01))
