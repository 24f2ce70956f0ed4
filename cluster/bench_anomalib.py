"""anomalib 2.7's PatchCore as the peer of the expert benchmark (optional extra ``[bench]``).

``run_anomalib_patchcore(data_dir, category, backbone_state_dict=...)`` fits anomalib's own
``PatchcoreModel`` (``anomalib.models.image.patchcore.torch_model``) on an MVTec-layout
category and scores its test split with ``training.metrics``::

    <data_dir>/<category>/train/good/*.png
    <data_dir>/<category>/test/<type>/*.png                 label = (type != "good")
    <data_dir>/<category>/ground_truth/<type>/<stem>_mask.png   (optional; > 0 = anomalous)

Install: ``pip install torch==2.13.0 -e '.[bench]'`` (anomalib is not in the base set).

What is compared, and why it is fair:

- **Same weights.** The model is built with ``pre_trained=False`` (nothing is fetched from a
  hub) and the given timm state dict (full-model key names, e.g. the prepared
  ``tf_efficientnet_lite0`` safetensors) is loaded into anomalib's timm ``features_only``
  extractor: exactly the keys that extractor holds, strictly; a missing key is an error.
- **Same stages.** ``layers`` are timm ``out_indices`` (as ``expert.backbone.layers``);
  anomalib's ``TimmFeatureExtractor`` accepts integer layers and builds the same
  ``timm.create_model(..., features_only=True, out_indices=layers)``.
- **Same input.** Images are decoded to float RGB in [0, 1] and resized to
  ``image_size`` x ``image_size`` with antialiasing, as anomalib's PatchCore pre-processor
  (``Patchcore.configure_pre_processor``) does, then normalised with the mean/std the
  project's expert uses for this backbone (``actors.modeling.patchcore.NORMALISATION``:
  mean = std = 0.5 for ``tf_efficientnet_lite0``, whose weights expect inputs in [-1, 1],
  as timm's config says). anomalib's pre-processor hard-codes ImageNet mean/std for every
  backbone; feeding it that would handicap the peer with inputs its weights were not
  trained on, so we don't. Backbones the expert does not list get ImageNet mean/std
  (anomalib's default); ``mean``/``std`` override both. The resize differs from the
  expert's (PIL bilinear on uint8) only by rounding.
- **Raw scores.** We call the torch model the way the Lightning ``Patchcore`` does (train
  mode: collect embeddings; ``subsample_embedding(coreset_ratio)``; eval mode: predict) but
  skip Lightning's post-processor, whose min-max normalisation and clamping to [0, 1] could
  only add ties; metrics use anomalib's raw image scores and anomaly maps.
- **Maps at image resolution.** anomalib's map (nearest upsampling of patch scores to the
  model input, Gaussian blur sigma 4) is resized bilinearly to each test image's original
  size, where the ground-truth masks live.

Measurements: ``fit_seconds`` is wall time of decoding, resizing and embedding the train
images plus coreset selection; ``images_per_second`` is test images / wall time of decoding,
resizing and the model's forward passes (batched, map resize included, metrics excluded),
which is what the project's expert is timed on too. ``peak_memory_mb`` is the peak resident set size of this
process (MiB) while fitting and predicting, sampled every 5 ms from ``/proc/self/statm``
by a background thread (falls back to ``ru_maxrss``, the lifetime peak, off Linux). It is
absolute RSS, so it includes the Python/torch baseline.

Memory: anomalib's coreset selection allocates and frees one (n_patches,) buffer per
selected centre; under glibc malloc RSS was seen to grow to 19 GB with 20 training images
(shared/PLATFORM.md). When ``limit_glibc_mmap_threshold`` is true (default) we call
``mallopt(M_MMAP_THRESHOLD, 128 KiB)`` in-process (the same as starting Python with
``MALLOC_MMAP_THRESHOLD_=131072``), so large buffers go back to the OS when freed. The other
remedy is ``LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libjemalloc.so.2`` (Debian
``libjemalloc2``) at process start. With ``heap_allocations`` (what the bench passes when
``expert.heap_allocations`` is on) predict then runs under the allocator policy the project's
expert uses (``actors/modeling/allocator.py``: large tensors from the heap, freed pages kept),
so the predict ratio compares the engines, not the allocators.
"""

from __future__ import annotations

import ctypes
import logging
import os
import resource
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from actors.modeling._timm import ensure_torchvision_importable
from actors.modeling.allocator import keep_freed_memory
from training.metrics import image_auroc, pixel_auroc, pro_score

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_SUFFIXES = (".png",)
_M_MMAP_THRESHOLD = -3  # glibc <malloc.h>


@dataclass(frozen=True)
class TestItem:
    path: Path
    label: bool  # True = anomalous (its folder is not "good")
    mask_path: Path | None


def list_category(data_dir: Path, category: str) -> tuple[list[Path], list[TestItem]]:
    """Train images and test items of one MVTec-layout category (sorted, deterministic)."""
    root = Path(data_dir) / category
    train = sorted((root / "train" / "good").glob("*.png"))
    if not train:
        raise FileNotFoundError(f"no training images in {root / 'train' / 'good'}/*.png")
    test_root = root / "test"
    if not test_root.is_dir():
        raise FileNotFoundError(f"no test split: {test_root} is not a directory")
    items = []
    for type_dir in sorted(p for p in test_root.iterdir() if p.is_dir()):
        for path in sorted(type_dir.glob("*.png")):
            mask = root / "ground_truth" / type_dir.name / f"{path.stem}_mask.png"
            items.append(TestItem(path, type_dir.name != "good", mask if mask.is_file() else None))
    if not items:
        raise FileNotFoundError(f"no test images in {test_root}/<type>/*.png")
    return train, items


def _read_rgb(path: Path) -> torch.Tensor:
    """(3, H, W) float32 in [0, 1], as anomalib's ``read_image``."""
    from PIL import Image

    with Image.open(path) as im:
        arr = np.asarray(im.convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(255.0)


def _read_mask(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("L")) > 0  # (H, W) bool


def _preprocess(
    paths: Sequence[Path], image_size: int, mean: Sequence[float], std: Sequence[float]
) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """(N, 3, S, S) model input and each image's original (H, W)."""
    from torchvision.transforms.v2 import functional as TF

    batch, sizes = [], []
    for path in paths:
        img = _read_rgb(path)
        sizes.append(tuple(img.shape[-2:]))
        img = TF.resize(img, [image_size, image_size], antialias=True)
        batch.append(TF.normalize(img, list(mean), list(std)))
    return torch.stack(batch), sizes


def expert_normalisation(backbone: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) the project's expert feeds ``backbone``; ImageNet's if it lists none."""
    from actors.modeling.patchcore import NORMALISATION

    if backbone in NORMALISATION:
        return NORMALISATION[backbone]
    log.warning("expert has no normalisation for %s: using ImageNet mean/std", backbone)
    return IMAGENET_MEAN, IMAGENET_STD


def build_patchcore(
    backbone_state_dict: dict[str, torch.Tensor],
    backbone: str,
    layers: tuple[int, ...],
    num_neighbours: int,
):  # -> anomalib PatchcoreModel
    """anomalib's ``PatchcoreModel`` (pre_trained=False) with the given timm weights loaded."""
    ensure_torchvision_importable()
    from anomalib.models.image.patchcore.torch_model import PatchcoreModel

    model = PatchcoreModel(
        layers=list(layers), backbone=backbone, pre_trained=False, num_neighbors=num_neighbours
    )
    extractor = model.feature_extractor.feature_extractor  # timm features_only network
    own = extractor.state_dict()
    missing = sorted(k for k in own if k not in backbone_state_dict)
    if missing:
        raise ValueError(
            f"backbone_state_dict lacks {len(missing)} of the {len(own)} keys of {backbone}'s "
            f"feature extractor (layers {layers}), e.g. {missing[:5]}; expected timm "
            "full-model key names"
        )
    extractor.load_state_dict({k: backbone_state_dict[k] for k in own}, strict=True)
    log.info("loaded %d/%d backbone tensors into anomalib's extractor", len(own),
             len(backbone_state_dict))
    return model.float()


class _PeakRss:
    """Context manager sampling this process's RSS in a thread; ``.peak_mb`` in MiB."""

    def __init__(self, interval_s: float = 0.005) -> None:
        self.interval_s = interval_s
        self.peak_mb = 0.0
        self._stop = threading.Event()
        self._page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
        self._proc = Path("/proc/self/statm").is_file()

    def _rss_mb(self) -> float:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self._page / 2**20

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_mb = max(self.peak_mb, self._rss_mb())
            self._stop.wait(self.interval_s)

    def __enter__(self) -> "_PeakRss":
        if self._proc:
            self.peak_mb = self._rss_mb()
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._proc:
            self._stop.set()
            self._thread.join()
            self.peak_mb = max(self.peak_mb, self._rss_mb())
        else:  # ru_maxrss is KiB on Linux; lifetime peak, an upper bound
            self.peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def limit_glibc_mmap_threshold(threshold: int = 128 * 1024) -> bool:
    """``mallopt(M_MMAP_THRESHOLD, threshold)`` under glibc; False where unavailable."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, threshold))
    except (OSError, AttributeError):
        return False


def _seeded_coreset(model, ratio: float, seed: int) -> None:
    """``subsample_embedding`` with torch's and numpy's global RNGs seeded, then restored
    (the random start uses torch; the projection's column sampling numpy's global RNG)."""
    np_state = np.random.get_state()
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            np.random.seed(seed)
            model.subsample_embedding(ratio)
    finally:
        np.random.set_state(np_state)


def _predict(model, images: torch.Tensor, sizes, batch_size: int):
    """Image scores (N,) and anomaly maps, each resized bilinearly to its original size."""
    scores, maps = [], []
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            out = model(images[start : start + batch_size])
            scores.append(out.pred_score.reshape(-1))
            for i, amap in enumerate(out.anomaly_map):  # (1, S, S)
                size = sizes[start + i]
                if tuple(amap.shape[-2:]) != size:
                    amap = F.interpolate(amap[None], size=size, mode="bilinear",
                                         align_corners=False)[0]
                maps.append(amap[0].numpy())
    return torch.cat(scores).numpy(), maps


def run_anomalib_patchcore(
    data_dir: Path,
    category: str,
    *,
    backbone_state_dict: dict[str, torch.Tensor],
    backbone: str = "tf_efficientnet_lite0",
    layers: tuple[int, ...] = (2, 3),
    image_size: int = 224,
    coreset_ratio: float = 0.1,
    num_neighbours: int = 1,
    batch_size: int = 8,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    seed: int = 0,
    limit_glibc_mmap: bool = True,
    heap_allocations: bool = False,
) -> dict:
    """Fit anomalib's PatchCore on ``train/good`` and evaluate it on ``test`` (module doc).

    Returns ``{"image_auroc", "pixel_auroc", "pro", "fit_seconds", "images_per_second",
    "peak_memory_mb", "n_train", "n_test", "memory_bank_size", "mean", "std"}``; the pixel
    metrics are None when the category has no ground-truth masks. ``seed`` fixes the
    coreset's random start (torch) and random projection (numpy's global RNG); both RNG
    states are restored.
    """
    if limit_glibc_mmap:
        limit_glibc_mmap_threshold()
    train_paths, items = list_category(data_dir, category)
    if mean is None or std is None:
        default_mean, default_std = expert_normalisation(backbone)
        mean = default_mean if mean is None else mean
        std = default_std if std is None else std
    model = build_patchcore(backbone_state_dict, backbone, layers, num_neighbours)
    labels = np.array([it.label for it in items])

    # Decoding and resizing are timed with fit and predict, as the project's expert times
    # them (both engines start from image files on disk).
    with _PeakRss() as rss:
        t0 = time.perf_counter()
        train_x, _ = _preprocess(train_paths, image_size, mean, std)
        model.train()  # PatchcoreModel collects embeddings in train mode (extractor stays eval)
        with torch.no_grad():
            for start in range(0, len(train_x), batch_size):
                model(train_x[start : start + batch_size])
        _seeded_coreset(model, coreset_ratio, seed)
        fit_seconds = time.perf_counter() - t0
        model.eval()
        if heap_allocations:  # the allocator policy the project's expert predicts under
            keep_freed_memory()
        t0 = time.perf_counter()
        test_x, sizes = _preprocess([it.path for it in items], image_size, mean, std)
        scores, maps = _predict(model, test_x, sizes, batch_size)
        predict_seconds = time.perf_counter() - t0

    result = {
        "image_auroc": image_auroc(labels, scores),
        "pixel_auroc": None,
        "pro": None,
        "fit_seconds": fit_seconds,
        "images_per_second": len(items) / predict_seconds,
        "peak_memory_mb": rss.peak_mb,
        "n_train": len(train_paths),
        "n_test": len(items),
        "memory_bank_size": int(model.memory_bank.shape[0]),
    }
    if any(it.mask_path is not None for it in items):
        masks, stacked = _masks_for(items, sizes, maps)
        result["pixel_auroc"] = pixel_auroc(masks, stacked)
        result["pro"] = pro_score(masks, stacked)
    result["mean"], result["std"] = tuple(mean), tuple(std)
    log.info("anomalib patchcore %s: %s", category, result)
    return result


def _masks_for(items: Sequence[TestItem], sizes, maps) -> tuple[np.ndarray, np.ndarray]:
    """(N, H, W) masks (all-False for good images) and maps; every image the same size."""
    if len(set(sizes)) != 1:
        raise ValueError(f"pixel metrics need test images of one size, got {sorted(set(sizes))}")
    masks = np.zeros((len(items), *sizes[0]), dtype=bool)
    for i, it in enumerate(items):
        if it.mask_path is None:
            if it.label:
                raise ValueError(
                    f"{it.path}: anomalous test image has no mask at "
                    f"ground_truth/{it.path.parent.name}/{it.path.stem}_mask.png"
                )
            continue
        mask = _read_mask(it.mask_path)
        if mask.shape != sizes[i]:
            raise ValueError(f"{it.mask_path}: mask {mask.shape} vs image {sizes[i]}")
        masks[i] = mask
    return masks, np.stack(maps).astype(np.float32)
