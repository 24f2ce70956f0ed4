"""Cross-fitted PatchCore banks that draw the training maps (``training.data``).

A bank scores its own fit images unrealistically well (their patches are in it), so a map
drawn on a training image by the category's full bank looks nothing like the map of an
unseen test image. With ``expert_folds = k`` each category gets up to k banks (one per fold
that holds images), bank f fit on the images *not* in fold f, and an image of fold f is
scored by bank f: every training map is the map of an image its expert has never seen, as
at test time. More folds make the banks nearer the deployed one (fit on every image): on
the texture benchmark, 2 folds drew normal maps ~0.03 warmer than unseen normals' (8 do
not). Banks are cached under ``<banks_dir>/<category>/fold<f>`` and refit when the expert
config or the images change.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

from actors.modeling.bank import feature_signature
from training.data import Source
from training.memory_bank import fit_bank

log = logging.getLogger(__name__)
KEY_FILE = "fit_key.json"


def _key(cfg, paths: list[str]) -> str:
    data = {"expert": cfg.expert.model_dump(mode="json"), "features": feature_signature(cfg.expert),
            "paths": sorted(paths)}
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def fit_fold_banks(cfg, sources: list[Source], out: Path, progress: bool = False
                   ) -> dict[tuple[str, int], str]:
    """{(category, fold): bank directory}, fitting only what is missing or stale."""
    folds = cfg.train.data.expert_folds
    banks: dict[tuple[str, int], str] = {}
    for category in sorted({s.category for s in sources}):
        mine = [s for s in sources if s.category == category]
        for f in sorted({s.fold for s in mine}):  # a fold without images needs no bank
            fit = [s.path for s in mine if folds == 1 or s.fold != f]
            if not fit:
                raise ValueError(f"category {category!r}: too few images for {folds} expert folds")
            bank = Path(out) / category / f"fold{f}"
            key = _key(cfg, fit)
            key_file = bank / KEY_FILE
            if not (key_file.is_file() and json.loads(key_file.read_text()).get("key") == key):
                log.info("fitting expert bank %s on %d images", bank, len(fit))
                fit_bank(cfg.expert, cfg.paths.weights_dir, [Path(p) for p in fit], bank, category,
                         progress=progress)
                key_file.write_text(json.dumps({"key": key, "images": len(fit)}))
            banks[(category, f)] = str(bank)
    return banks
