"""Evaluate the PatchCore expert on a category's test split (image/pixel AUROC, PRO).

Predict throughput is measured over the whole predict path (decode, preprocess, features,
search, maps); the share of time in FAISS search vs feature extraction is reported too.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np
from tqdm import tqdm

from actors.modeling.patchcore import PatchCore
from actors.modeling.preprocess import to_batch
from training.metrics import image_auroc, pixel_auroc, pro_score
from training.mvtec import Category, batched, iter_images, load_mask

log = logging.getLogger(__name__)


@dataclass
class ExpertPredictions:
    paths: list[str]
    labels: np.ndarray  # (N,) bool
    scores: np.ndarray  # (N,) float
    maps: np.ndarray  # (N, S, S) float32
    masks: np.ndarray | None  # (N, S, S) bool, None when the category has no masks
    seconds: float
    skipped: list[dict] = field(default_factory=list)


def predict_category(expert: PatchCore, category: Category, progress: bool = True) -> ExpertPredictions:
    cfg = expert.cfg
    samples = category.test_samples()
    by_path = {s.path: s for s in samples}
    has_masks = any(s.mask_path for s in samples)
    mean, std = expert.mean_std
    skipped: list[dict] = []
    paths, labels, scores, maps, masks = [], [], [], [], []
    expert.timings.reset()
    bar = tqdm(total=len(samples), desc="predict", unit="img", disable=not progress, leave=False)
    t0 = time.perf_counter()
    for batch in batched(iter_images([s.path for s in samples], cfg.max_image_pixels, skipped), cfg.batch_size):
        out = expert.predict(to_batch([im for _, im in batch], cfg.image_size, mean, std))
        for (path, _), score, amap in zip(batch, out.scores, out.anomaly_maps):
            sample = by_path[path]
            paths.append(str(path))
            labels.append(sample.is_anomalous)
            scores.append(float(score))
            maps.append(amap)
            if has_masks:
                masks.append(load_mask(sample.mask_path, amap.shape))
        bar.update(len(batch))
    seconds = time.perf_counter() - t0
    bar.close()
    return ExpertPredictions(
        paths,
        np.asarray(labels, dtype=bool),
        np.asarray(scores),
        np.stack(maps) if maps else np.zeros((0, cfg.image_size, cfg.image_size), np.float32),
        np.stack(masks) if masks else None,
        seconds,
        skipped,
    )


def expert_metrics(pred: ExpertPredictions, threshold: float | None = None) -> dict:
    """The keys ``myriad expert evaluate`` writes (pixel metrics None without masks)."""
    n = len(pred.paths)
    result = {
        "images": n,
        "image_auroc": image_auroc(pred.labels, pred.scores),
        "pixel_auroc": None,
        "pro": None,
        "images_per_second": n / pred.seconds if pred.seconds > 0 else None,
        "skipped": pred.skipped,
    }
    if pred.masks is not None and pred.masks.any():
        result["pixel_auroc"] = pixel_auroc(pred.masks, pred.maps)
        result["pro"] = pro_score(pred.masks, pred.maps)
    if threshold is not None:
        result["threshold"] = threshold
        result["accuracy"] = float(((pred.scores > threshold) == pred.labels).mean())
    return result


def search_share(expert: PatchCore) -> dict:
    t = expert.timings
    total = t.features + t.search + t.maps
    return {
        "feature_seconds": round(t.features, 4),
        "search_seconds": round(t.search, 4),
        "map_seconds": round(t.maps, 4),
        "search_share": round(t.search / total, 4) if total else None,
        "feature_share": round(t.features / total, 4) if total else None,
    }
