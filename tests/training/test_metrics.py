"""training.metrics: AUROC against sklearn, AU-PRO against hand-computed values and a slow
loop-over-thresholds reference implementation."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage
from sklearn.metrics import roc_auc_score

from training.metrics import image_auroc, pixel_auroc, pro_curve, pro_score


def _masks_and_maps(seed: int, n: int = 4, size: int = 32, levels: int | None = 16):
    """Random masks with several blobs (some images normal) and noisy maps that favour them;
    ``levels`` quantises the maps so that ties occur."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((n, size, size), bool)
    for i in range(n - 1):  # the last image stays normal
        for _ in range(rng.integers(1, 4)):
            y, x = rng.integers(0, size - 6, 2)
            h, w = rng.integers(1, 7, 2)
            masks[i, y : y + h, x : x + w] = True
    maps = rng.random(masks.shape) + 0.6 * masks
    if levels is not None:
        maps = np.round(maps * levels) / levels
    return masks, maps.astype(np.float32)


def _slow_curve(masks, maps, thresholds):
    """PRO and FPR at each threshold by direct counting, region by region."""
    regions = [ndimage.label(m, structure=np.ones((3, 3)))[0] for m in masks]
    fprs, pros = [], []
    for t in thresholds:
        detected = maps >= t
        fprs.append(detected[~masks].sum() / (~masks).sum())
        overlaps = [
            detected[i][lab == k].mean()
            for i, lab in enumerate(regions)
            for k in range(1, lab.max() + 1)
        ]
        pros.append(np.mean(overlaps))
    return np.array(fprs), np.array(pros)


def _slow_trapezoid(x, y, x_max):
    area = 0.0
    for i in range(1, len(x)):
        x0, x1, y0, y1 = x[i - 1], x[i], y[i - 1], y[i]
        if x0 >= x_max:
            break
        if x1 > x_max:  # cut the last segment at x_max by linear interpolation
            y1 = y0 + (y1 - y0) * (x_max - x0) / (x1 - x0)
            x1 = x_max
        area += 0.5 * (y0 + y1) * (x1 - x0)
    return area


# --- AUROC -------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_image_auroc_matches_sklearn_with_ties(seed):
    rng = np.random.default_rng(seed)
    labels = rng.random(200) < 0.3
    scores = np.round(rng.random(200) + 0.5 * labels, 1)  # many ties
    assert image_auroc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)


def test_image_auroc_small_cases():
    assert image_auroc(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8])) == 0.75
    assert image_auroc(np.array([False, True]), np.array([0.0, 1.0])) == 1.0
    assert image_auroc(np.array([False, True]), np.array([1.0, 0.0])) == 0.0
    assert image_auroc(np.array([False, True]), np.array([0.5, 0.5])) == 0.5


@pytest.mark.parametrize("levels", [None, 8])
def test_pixel_auroc_matches_sklearn(levels):
    masks, maps = _masks_and_maps(3, n=5, size=40, levels=levels)
    expected = roc_auc_score(masks.ravel(), maps.ravel())
    assert pixel_auroc(masks, maps) == pytest.approx(expected, abs=1e-12)


def test_pixel_auroc_accepts_01_integer_masks():
    masks, maps = _masks_and_maps(4)
    assert pixel_auroc(masks.astype(np.uint8), maps) == pixel_auroc(masks, maps)


# --- PRO ---------------------------------------------------------------------------------


def test_pro_hand_computed_case():
    # One 1x6 image; regions A = {0, 1}, B = {5}; normal pixels 2, 3, 4.
    masks = np.array([[[1, 1, 0, 0, 0, 1]]], bool)
    maps = np.array([[[0.9, 0.3, 0.8, 0.2, 0.1, 0.5]]])
    curve = pro_curve(masks, maps)
    # t:   inf  0.9   0.8   0.5   0.3   0.2   0.1
    np.testing.assert_allclose(curve.fpr, [0, 0, 1 / 3, 1 / 3, 1 / 3, 2 / 3, 1])
    np.testing.assert_allclose(curve.pro, [0, 0.25, 0.25, 0.75, 1, 1, 1])
    np.testing.assert_allclose(curve.threshold[1:], [0.9, 0.8, 0.5, 0.3, 0.2, 0.1])
    assert pro_score(masks, maps, fpr_limit=0.3) == pytest.approx(0.25)  # 0.3 * 0.25 / 0.3
    assert pro_score(masks, maps, fpr_limit=0.5) == pytest.approx(0.5)  # (1/12 + 1/6) / 0.5
    assert pro_score(masks, maps, fpr_limit=1.0) == pytest.approx(0.75)  # 1/12 + 2/3


def test_pro_regions_are_8_connected():
    # A diagonal pair is one region (8-connectivity, as MVTec AD and anomalib): detecting
    # one of its pixels plus the single-pixel region B gives (0.5 + 1) / 2, not (1+0+1)/3.
    masks = np.zeros((1, 5, 5), bool)
    masks[0, 0, 0] = masks[0, 1, 1] = True  # A
    masks[0, 4, 4] = True  # B
    maps = np.zeros((1, 5, 5))
    maps[0, 0, 0] = maps[0, 4, 4] = 1.0
    curve = pro_curve(masks, maps)
    assert curve.fpr[1] == 0.0 and curve.pro[1] == pytest.approx(0.75)


def test_pro_perfect_inverted_and_random_maps():
    masks, _ = _masks_and_maps(5, n=6, size=48)
    rng = np.random.default_rng(0)
    perfect = masks + 0.5 * rng.random(masks.shape)  # every anomalous pixel above all normal
    assert pro_score(masks, perfect) == pytest.approx(1.0)
    assert pro_score(masks, -perfect) == pytest.approx(0.0)
    random = pro_score(masks, rng.random(masks.shape))
    assert 0.05 < random < 0.25  # PRO ~ FPR: area ~ 0.3^2 / 2 / 0.3 = 0.15


@pytest.mark.parametrize("seed", [0, 1])
def test_pro_curve_matches_slow_reference_at_every_threshold(seed):
    masks, maps = _masks_and_maps(seed)
    curve = pro_curve(masks, maps)
    fprs, pros = _slow_curve(masks, maps, curve.threshold[1:])
    np.testing.assert_allclose(curve.fpr[1:], fprs, atol=1e-12)
    np.testing.assert_allclose(curve.pro[1:], pros, atol=1e-12)


@pytest.mark.parametrize("limit", [0.05, 0.3, 1.0])
@pytest.mark.parametrize("levels", [None, 16])
def test_pro_score_matches_slow_reference(limit, levels):
    masks, maps = _masks_and_maps(7, levels=levels)
    # Exact: every distinct score is a threshold.
    thresholds = np.unique(maps)[::-1]
    fprs, pros = _slow_curve(masks, maps, thresholds)
    expected = _slow_trapezoid(np.r_[0, fprs], np.r_[0, pros], limit) / limit
    assert pro_score(masks, maps, fpr_limit=limit) == pytest.approx(expected, abs=1e-9)
    # Threshold sweep: 50 evenly spaced thresholds over [min, max].
    sweep = np.linspace(maps.min(), maps.max(), 50)[::-1]
    fprs, pros = _slow_curve(masks, maps, sweep)
    expected = _slow_trapezoid(np.r_[0, fprs], np.r_[0, pros], limit) / limit
    got = pro_score(masks, maps, fpr_limit=limit, num_thresholds=50)
    assert got == pytest.approx(expected, abs=1e-9)


def test_pro_threshold_sweep_converges_to_exact():
    masks, maps = _masks_and_maps(8, levels=None)
    exact = pro_score(masks, maps)
    assert abs(pro_score(masks, maps, num_thresholds=2000) - exact) < 0.01


# --- errors ------------------------------------------------------------------------------


def test_errors_are_clear():
    masks, maps = _masks_and_maps(0)
    with pytest.raises(ValueError, match="shape mismatch"):
        pixel_auroc(masks, maps[:, :-1])
    with pytest.raises(ValueError, match="3 dimensions"):
        pro_score(masks[0], maps[0])
    with pytest.raises(ValueError, match="no positives"):
        pro_score(np.zeros_like(masks), maps)
    with pytest.raises(ValueError, match="no negatives"):
        pixel_auroc(np.ones_like(masks), maps)
    with pytest.raises(ValueError, match="no positives"):
        image_auroc(np.zeros(3, bool), np.arange(3.0))
    with pytest.raises(ValueError, match="no negatives"):
        image_auroc(np.ones(3, bool), np.arange(3.0))
    with pytest.raises(ValueError, match="shape mismatch"):
        image_auroc(np.array([0, 1]), np.arange(3.0))
    with pytest.raises(ValueError, match="boolean or 0/1"):
        pixel_auroc(masks.astype(np.uint8) * 255, maps)
    with pytest.raises(ValueError, match="NaN"):
        pixel_auroc(masks, np.where(masks, np.nan, maps))
    with pytest.raises(ValueError, match="fpr_limit"):
        pro_score(masks, maps, fpr_limit=0.0)
    with pytest.raises(ValueError, match="num_thresholds"):
        pro_score(masks, maps, num_thresholds=1)
