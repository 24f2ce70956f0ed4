"""cluster.bench_anomalib: anomalib 2.7's PatchCore on a tiny synthetic MVTec-layout set.

Marked ``bench``: deselected by the default run (``-m "not bench"`` in pyproject) and run by
``make test-bench`` in ``.venv-bench``, where the optional ``[bench]`` extra (anomalib) is
installed; ``.ci/run`` runs both. The prepared weights are made by the fixture.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # any accidental hub call fails fast

from actors.modeling._timm import ensure_torchvision_importable  # noqa: E402

ensure_torchvision_importable()
pytestmark = pytest.mark.bench

from cluster.bench_anomalib import (  # noqa: E402
    build_patchcore,
    list_category,
    run_anomalib_patchcore,
)


def _save(path: Path, arr: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def make_brick_category(root: Path, n_train: int = 10, n_good: int = 3, n_bad: int = 4,
                        seed: int = 0) -> Path:
    """MVTec layout from 256x256 crops of skimage's brick texture; ``scratch`` defects are
    dark 3-px lines with their masks."""
    from skimage import data, draw

    rng = np.random.default_rng(seed)
    brick = data.brick()  # (512, 512) uint8, packaged with scikit-image

    def crop() -> np.ndarray:
        y, x = rng.integers(0, brick.shape[0] - 256, 2)
        return np.repeat(brick[y : y + 256, x : x + 256, None], 3, axis=2).copy()

    cat = root / "brick"
    for i in range(n_train):
        _save(cat / "train" / "good" / f"{i:03d}.png", crop())
    for i in range(n_good):
        _save(cat / "test" / "good" / f"{i:03d}.png", crop())
    for i in range(n_bad):
        img = crop()
        mask = np.zeros(img.shape[:2], bool)
        r0, c0, r1, c1 = rng.integers(30, 226, 4)
        for d in (-1, 0, 1):
            rr, cc = draw.line(r0, c0 + d, r1, c1 + d)
            keep = (cc >= 0) & (cc < 256)
            mask[rr[keep], cc[keep]] = True
        img[mask] = 10
        _save(cat / "test" / "scratch" / f"{i:03d}.png", img)
        _save(cat / "ground_truth" / "scratch" / f"{i:03d}_mask.png", mask.astype(np.uint8) * 255)
    return root


@pytest.fixture(scope="module")
def state_dict():
    from actors.modeling import weights
    from configs import load_config

    weights_dir = load_config("small").paths.weights_dir
    weights.prepare(weights_dir, ["tf_efficientnet_lite0"])
    return weights.load_state_dict(weights_dir, "tf_efficientnet_lite0")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return make_brick_category(tmp_path_factory.mktemp("mvtec"))


def test_list_category_layout(dataset):
    train, items = list_category(dataset, "brick")
    assert len(train) == 10 and len(items) == 7
    assert [it.label for it in items] == [False] * 3 + [True] * 4
    assert all((it.mask_path is None) == (not it.label) for it in items)


def test_weights_are_loaded_into_anomalib_extractor(state_dict):
    import torch

    model = build_patchcore(state_dict, "tf_efficientnet_lite0", (2, 3), 1)
    extractor = model.feature_extractor.feature_extractor
    for key, value in extractor.state_dict().items():
        assert torch.equal(value, state_dict[key]), key
    with pytest.raises(ValueError, match="lacks"):
        build_patchcore({k: v for k, v in state_dict.items() if not k.startswith("blocks.1.")},
                        "tf_efficientnet_lite0", (2, 3), 1)


def test_run_anomalib_patchcore_detects_scratches(dataset, state_dict):
    result = run_anomalib_patchcore(dataset, "brick", backbone_state_dict=state_dict)
    print(result)
    assert result["n_train"] == 10 and result["n_test"] == 7
    assert result["memory_bank_size"] == int(10 * 28 * 28 * 0.1)  # stride-8 grid at 224
    assert result["image_auroc"] >= 0.9
    assert result["pixel_auroc"] >= 0.9
    assert 0.5 <= result["pro"] <= 1.0
    assert result["fit_seconds"] > 0 and result["images_per_second"] > 0
    assert 0 < result["peak_memory_mb"] < 8000
    assert result["mean"] == result["std"] == (0.5, 0.5, 0.5)  # the expert's, for this backbone


def test_no_masks_gives_no_pixel_metrics(tmp_path, state_dict):
    root = make_brick_category(tmp_path, n_train=3, n_good=2, n_bad=2, seed=1)
    for mask in (root / "brick" / "ground_truth").rglob("*.png"):
        mask.unlink()
    result = run_anomalib_patchcore(root, "brick", backbone_state_dict=state_dict,
                                    image_size=128)
    assert result["pixel_auroc"] is None and result["pro"] is None
    assert 0.0 <= result["image_auroc"] <= 1.0
