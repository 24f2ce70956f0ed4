"""Shared fixtures: offline environment, one Ray cluster per session, small datasets."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# Tests run their own throw-away local cluster; production sets token auth (README).
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402


@pytest.fixture(scope="session")
def ray_cluster():
    import ray

    if not ray.is_initialized():
        # Logical CPUs above the 2 physical cores: Ray Train + Data deadlock otherwise.
        ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


def _texture(rng: np.random.Generator, size: int) -> np.ndarray:
    """A regular, slightly noisy stripe texture (RGB uint8)."""
    yy, xx = np.mgrid[0:size, 0:size]
    base = 128 + 60 * np.sin(xx / 3.0) * np.cos(yy / 5.0)
    img = base[..., None] + rng.normal(0, 6, (size, size, 1))
    img = np.repeat(img, 3, axis=2) * np.array([1.0, 0.9, 0.8])
    return img.clip(0, 255).astype(np.uint8)


def make_dataset(root: Path, category: str = "stripes", n_train: int = 12, n_good: int = 4,
                 n_bad: int = 4, size: int = 96, seed: int = 0, n_train_more: int = 12) -> Path:
    """A tiny MVTec-layout category with an obvious dark-blob defect and masks.

    ``n_train + n_train_more`` normal training images; the second lot is drawn after the
    test images, so these stay the same whatever it is. 20% of them are held out for the
    threshold: with 12 images that was 2, too few for the ``normal_fit`` rule (a good test
    image sat on the threshold)."""
    rng = np.random.default_rng(seed)
    cat = root / category
    for sub in ("train/good", "test/good", "test/blob", "ground_truth/blob"):
        (cat / sub).mkdir(parents=True, exist_ok=True)
    for i in range(n_train):
        Image.fromarray(_texture(rng, size)).save(cat / "train" / "good" / f"{i:03d}.png")
    for i in range(n_good):
        Image.fromarray(_texture(rng, size)).save(cat / "test" / "good" / f"{i:03d}.png")
    for i in range(n_bad):
        img = _texture(rng, size)
        mask = np.zeros((size, size), np.uint8)
        y, x = rng.integers(10, size - 30, 2)
        img[y : y + 20, x : x + 20] = (20, 200, 20)
        mask[y : y + 20, x : x + 20] = 255
        Image.fromarray(img).save(cat / "test" / "blob" / f"{i:03d}.png")
        Image.fromarray(mask).save(cat / "ground_truth" / "blob" / f"{i:03d}_mask.png")
    for i in range(n_train, n_train + n_train_more):
        Image.fromarray(_texture(rng, size)).save(cat / "train" / "good" / f"{i:03d}.png")
    return root


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="session")
def myriad_home(tmp_path_factory) -> Path:
    """The configured home (weights are shared with the developer's .myriad unless MYRIAD_HOME)."""
    from configs import load_config

    return load_config("tiny").paths.home


@pytest.fixture(scope="session")
def tiny_cfg():
    from configs import load_config

    return load_config("tiny")


@pytest.fixture(scope="session")
def tiny_bank(tiny_cfg, tiny_dataset, tmp_path_factory) -> Path:
    from training.memory_bank import fit_bank
    from training.mvtec import open_category

    out = tmp_path_factory.mktemp("bank") / "bank"
    paths = open_category(tiny_dataset, "stripes").train_good()
    fit_bank(tiny_cfg.expert, tiny_cfg.paths.weights_dir, paths, out, "stripes", progress=False)
    return out


@pytest.fixture(scope="session")
def kafka_broker():
    """The embedded Tansu broker (streams/broker.py), one per session, stopped at the end."""
    from streams.broker import EmbeddedBroker

    with EmbeddedBroker() as broker:
        yield broker
