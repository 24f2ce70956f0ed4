"""Fit a PatchCore memory bank from normal images (few-shot works the same way).

Features of every normal patch -> greedy coreset -> FAISS index -> threshold calibrated on
normal scores the bank has not seen (each image against the bank without its fold's rows, or
held-out images) -> a bank directory (``actors.modeling.bank``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path
from statistics import NormalDist

import numpy as np
import torch
from tqdm import tqdm

from actors.modeling.bank import BankMeta, save_bank
from actors.modeling.coreset import greedy_coreset
from actors.modeling.errors import DatasetError
from actors.modeling.knn import MemoryIndex
from actors.modeling.patchcore import ExpertOutput, PatchCore
from actors.modeling.preprocess import to_batch
from configs.schema import ExpertConfig, IndexKind
from training.mvtec import batched, iter_images

log = logging.getLogger(__name__)


def split_calibration(paths: list[Path], fraction: float, seed: int) -> tuple[list[Path], list[Path]]:
    """Hold out ``fraction`` of the normal images (at least one when there are >= 5)."""
    n_cal = int(len(paths) * fraction)
    if n_cal == 0 and fraction > 0 and len(paths) >= 5:
        n_cal = 1
    order = np.random.default_rng(seed).permutation(len(paths))
    cal = sorted(paths[i] for i in order[:n_cal])
    fit = sorted(paths[i] for i in order[n_cal:])
    return fit, cal


def cross_fit_scores(expert: PatchCore, feats: list[torch.Tensor], selected: torch.Tensor,
                     vectors: np.ndarray) -> Iterator[ExpertOutput]:
    """Each fit image scored against the bank without the rows its fold contributed.

    ``feats`` are the fit images' patch features (b, h, w, D) in the order the coreset saw
    them, so bank row ``j`` came from image ``selected[j] // (h * w)``. Images go to
    ``calibration_folds`` folds by a seeded permutation; each fold's rows are searched by an
    exact flat index, as ``predict`` searches the whole bank.
    """
    cfg = expert.cfg
    n = sum(len(f) for f in feats)
    h, w = feats[0].shape[1:3]
    fold = np.random.default_rng(cfg.seed).permutation(n) % min(cfg.calibration_folds, n)
    row_fold = fold[selected.numpy() // (h * w)]
    flat = cfg.index.model_copy(update={"kind": IndexKind.flat, "device": "cpu"})
    indexes: dict[int, MemoryIndex] = {}
    image = 0
    for batch in feats:
        patches = []
        for f in batch:
            f_id = int(fold[image])
            image += 1
            if f_id not in indexes:
                others = row_fold != f_id
                # A fold that contributed the whole bank is scored against all of it.
                indexes[f_id] = MemoryIndex.build(vectors[others] if others.any() else vectors, flat)
            patches.append(expert.patch_distances(f[None], indexes[f_id])[0])
        yield expert.score_patches(torch.stack(patches), (cfg.image_size,) * 2)


def _score_images(expert: PatchCore, paths: list[Path],
                  skipped: list[dict]) -> Iterator[tuple[list[str], ExpertOutput]]:
    cfg = expert.cfg
    mean, std = expert.mean_std
    for batch in batched(iter_images(paths, cfg.max_image_pixels, skipped), cfg.batch_size):
        out = expert.predict(to_batch([im for _, im in batch], cfg.image_size, mean, std))
        yield [str(p) for p, _ in batch], out


def extract(
    expert: PatchCore, paths: list[Path], skipped: list[dict], desc: str, progress: bool = True
) -> tuple[list[Path], list[torch.Tensor]]:
    """Patch features (b, h, w, D) per batch for readable images; unreadable ones skipped."""
    cfg = expert.cfg
    mean, std = expert.mean_std
    used, feats = [], []
    bar = tqdm(total=len(paths), desc=desc, unit="img", disable=not progress, leave=False)
    for batch in batched(iter_images(paths, cfg.max_image_pixels, skipped), cfg.batch_size):
        x = to_batch([img for _, img in batch], cfg.image_size, mean, std)
        feats.append(expert.embed(x))
        used.extend(p for p, _ in batch)
        bar.update(len(batch))
    bar.update(len(paths) - bar.n)
    bar.close()
    return used, feats


def calibrated_threshold(scores: list[float], cfg: ExpertConfig) -> float:
    """The decision threshold from held-out normal image scores (``expert.threshold_rule``)."""
    s = np.asarray(scores, dtype=np.float64)
    threshold = float(s.max())
    if cfg.threshold_rule == "normal_fit" and len(s) >= 2:
        z = NormalDist().inv_cdf(1.0 - cfg.false_alarm_rate)
        threshold = max(threshold, float(s.mean() + z * s.std(ddof=1)))
    return threshold * cfg.threshold_margin


def fit_bank(
    cfg: ExpertConfig,
    weights_dir: Path | None,
    paths: list[Path],
    out: Path,
    category: str = "",
    progress: bool = True,
) -> tuple[PatchCore, BankMeta]:
    """Fit a bank on normal images ``paths`` and save it to ``out``; returns the expert."""
    t0 = time.perf_counter()
    if not paths:
        raise DatasetError("no normal images to fit the expert on")
    cross = cfg.calibration == "cross_fit"
    if cross:
        fit_paths, cal_paths = paths, []
    else:
        fit_paths, cal_paths = split_calibration(paths, cfg.calibration_fraction, cfg.seed)
    expert = PatchCore(cfg, weights_dir)
    skipped: list[dict] = []
    used, feats = extract(expert, fit_paths, skipped, "features", progress)
    if not used:
        raise DatasetError(f"none of the {len(fit_paths)} normal images could be read; see the warnings")
    patches = torch.cat([f.reshape(-1, f.shape[-1]) for f in feats])  # (N, D)
    n_select = max(1, int(round(len(patches) * cfg.coreset_ratio)))
    t_core = time.perf_counter()
    idx = greedy_coreset(patches, n_select, cfg.coreset_projection_dim, seed=cfg.seed)
    vectors = patches[idx].numpy()
    coreset_s = time.perf_counter() - t_core
    expert.searcher = MemoryIndex.build(vectors, cfg.index)
    fit_seconds = time.perf_counter() - t0

    # Decision threshold from normal scores the bank has not seen: each fit image against the
    # bank without its fold's rows (``expert.calibration``), or held-out images. A single
    # image (few-shot) or no held-out image leaves only the fit images scored against the
    # whole bank; they sit closer to it, so the source is recorded and the margin matters more.
    cal_used, cal_scores, cal_patches = [], [], []
    if cross and len(used) >= 2:
        source = "cross_fit"
        starts = np.cumsum([0] + [len(f) for f in feats])
        names = ([str(p) for p in used[a : a + len(f)]] for a, f in zip(starts, feats))
        scored = zip(names, cross_fit_scores(expert, feats, idx, vectors))
    else:
        source = "held_out" if cal_paths else "fit_images"
        scored = _score_images(expert, cal_paths or used, skipped)
    for names, out_ in scored:
        cal_scores.extend(float(s) for s in out_.scores)
        cal_patches.append(out_.anomaly_maps.reshape(-1)[:: 7])  # a subsample of map values
        cal_used.extend(names)
    if not cal_scores:
        raise DatasetError("no calibration image could be read")
    threshold = calibrated_threshold(cal_scores, cfg)
    # The typical normal map value: ``BankMeta.normalize`` maps it to 0 and the threshold to 0.5.
    normal_level = min(float(np.median(np.concatenate(cal_patches))), 0.9 * threshold)
    meta = BankMeta(
        category=category,
        dim=int(vectors.shape[1]),
        size=int(vectors.shape[0]),
        threshold=float(threshold),
        normal_level=normal_level,
        expert=cfg.model_dump(mode="json"),
        calibration={"source": source,
                     "folds": min(cfg.calibration_folds, len(used)) if source == "cross_fit" else None,
                     "rule": cfg.threshold_rule, "false_alarm_rate": cfg.false_alarm_rate,
                     "images": cal_used, "scores": cal_scores},
        fit={
            "images": len(used),
            "patches": int(len(patches)),
            "coreset_seconds": round(coreset_s, 3),
            "fit_seconds": round(fit_seconds, 3),
            "skipped": skipped,
        },
    )
    save_bank(Path(out), vectors, meta, cfg)
    log.info(
        "bank %s: %d images -> %d patches -> %d in coreset (%.1fs), threshold %.4f",
        out, len(used), len(patches), len(vectors), fit_seconds, threshold,
    )
    expert.timings.reset()
    return expert, meta
