"""``myriad evaluate lmm``: the trained Myriad LMM on a category's test split, beside its expert.

For every test image: the expert's map (PatchCore of the category; fit from ``train/good``
when no bank is given, normalised by its threshold) -> the model's answer to the standard
instruction -> parsed verdict. Reported (JSON keys):

- ``answer_accuracy``: yes/no answers equal to the label (an unparseable answer is wrong);
- ``position_accuracy``: on defective images with a mask, answers whose grid positions are
  exactly the mask's cells (``grid.mask_to_positions``, the rule training targets use); an
  answer that says "no" there is wrong;
- ``position_hit_rate``: the same images, answers naming at least one of the mask's cells;
- ``unparseable_rate``; ``expert_accuracy``: the expert alone, score > its threshold;
  ``expert_image_auroc``.
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path

import numpy as np

from actors.modeling.grid import mask_to_positions
from actors.modeling.patchcore import lmm_map
from actors.modeling.preprocess import resize_map, to_batch
from training.metrics import image_auroc
from training.mvtec import batched, iter_images, load_mask, open_category

log = logging.getLogger(__name__)


def _expert(cfg, cat, category: str, bank: Path | None, workdir: Path):
    from actors.modeling.bank import bank_config, open_bank
    from training.memory_bank import fit_bank

    if bank is not None:
        return open_bank(bank, bank_config(bank, cfg.expert), cfg.paths.weights_dir)
    out = workdir / f"bank_{category}"
    return fit_bank(cfg.expert, cfg.paths.weights_dir, cat.train_good(), out, category, progress=False)


def evaluate_category(cfg, model, data: Path, category: str, bank: Path | None = None,
                      batch_size: int = 8) -> dict:
    cat = open_category(data, category)
    samples = cat.test_samples()
    by_path = {s.path: s for s in samples}
    rows, skipped = [], []
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="myriad-eval-") as tmp:
        expert, meta = _expert(cfg, cat, category, bank, Path(tmp))
        mean, std = expert.mean_std
        for batch in batched(iter_images([s.path for s in samples], cfg.expert.max_image_pixels, skipped),
                             batch_size):
            images = [im for _, im in batch]
            out = expert.predict(to_batch(images, expert.cfg.image_size, mean, std))
            maps = [np.clip(resize_map(lmm_map(m, meta.threshold, meta.normal_level), im.shape[0], im.shape[1]), 0, 1)
                    for m, im in zip(out.anomaly_maps, images)]
            inputs = model.preprocessor(images, maps)
            answers = model.generate(inputs.pixel_values, inputs.maps, [None] * len(images))
            for (path, im), score, ans in zip(batch, out.scores, answers):
                s = by_path[path]
                truth = mask_to_positions(load_mask(s.mask_path, im.shape[:2])) if s.mask_path else None
                rows.append({"path": str(path), "anomalous": s.is_anomalous, "kind": s.defect_type,
                             "truth_positions": truth, "answer": ans.text,
                             "verdict": ans.verdict.as_dict(), "expert_score": float(score),
                             "expert_anomalous": bool(score > meta.threshold)})
    return summarize(rows, meta.threshold, time.perf_counter() - t0, skipped)


def summarize(rows: list[dict], threshold: float, seconds: float, skipped: list) -> dict:
    n = len(rows)
    labels = np.array([r["anomalous"] for r in rows], bool)
    parsed = np.array([r["verdict"]["parsed"] for r in rows], bool)
    said = np.array([r["verdict"]["anomalous"] is True for r in rows], bool)
    answer_ok = parsed & (said == labels)
    pos_rows = [r for r in rows if r["anomalous"] and r["truth_positions"]]
    exact = [r["verdict"]["anomalous"] is True and set(r["verdict"]["positions"]) == set(r["truth_positions"])
             for r in pos_rows]
    hit = [r["verdict"]["anomalous"] is True and bool(set(r["verdict"]["positions"]) & set(r["truth_positions"]))
           for r in pos_rows]
    expert_pred = np.array([r["expert_anomalous"] for r in rows], bool)
    scores = np.array([r["expert_score"] for r in rows])
    return {
        "images": n,
        "answer_accuracy": float(answer_ok.mean()) if n else None,
        "position_accuracy": float(np.mean(exact)) if pos_rows else None,
        "position_hit_rate": float(np.mean(hit)) if pos_rows else None,
        "position_images": len(pos_rows),
        "unparseable_rate": float((~parsed).mean()) if n else None,
        "expert_accuracy": float((expert_pred == labels).mean()) if n else None,
        "expert_image_auroc": image_auroc(labels, scores) if labels.any() and (~labels).any() else None,
        "expert_threshold": threshold,
        "seconds": round(seconds, 2),
        "skipped": skipped,
        "per_image": rows,
    }


def evaluate_lmm(cfg, model_dir: Path, data: Path, categories: list[str], bank: Path | None = None,
                 batch_size: int = 8) -> dict:
    """Per-category results and their image-weighted totals."""
    import torch

    from actors.modeling.checkpoint import load_model_dir

    torch.set_num_threads(max(1, min(torch.get_num_threads(), 4)))
    model = load_model_dir(model_dir)
    model.eval()
    per = {}
    for c in categories:
        per[c] = evaluate_category(cfg, model, data, c, bank if len(categories) == 1 else None, batch_size)
        log.info("%s: %s", c, {k: v for k, v in per[c].items() if k not in ("per_image", "skipped")})
    all_rows = [r for c in categories for r in per[c]["per_image"]]
    total = summarize(all_rows, float("nan"), sum(p["seconds"] for p in per.values()), [])
    # Expert accuracy per category uses each category's own threshold: take it from the rows.
    total.pop("expert_threshold")
    total.pop("expert_image_auroc")
    total.pop("per_image")
    return {"model": str(model_dir), "data": str(data), "categories": categories, **total,
            "per_category": per}
