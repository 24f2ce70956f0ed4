"""PatchCore memory banks on disk: versioned, pickle-free, checked against the config.

Layout of a bank directory::

    bank.json            format, version, the expert config it was fit with, dim, size,
                         decision threshold and calibration scores, fit statistics
    memory.safetensors   {"vectors": (M, D) float32} the coreset patch features
    index.faiss          the FAISS index of all M rows (FAISS's own file format)

Shards are slices of ``memory.safetensors`` read without loading the rest.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from actors.modeling.errors import BankError
from actors.modeling.knn import MemoryIndex, ShardedIndex
from actors.modeling.patchcore import PatchCore, normalized_map
from configs.schema import ExpertConfig

BANK_FORMAT = "myriad-patchcore-bank"
BANK_VERSION = 1
# Config keys that change what a feature vector means: a bank is only valid under them.
FEATURE_KEYS = ("backbone", "image_size", "neighbourhood", "feature_dim", "seed", "border_padding",
                "backbone_dtype", "neighbourhood_zero_padding")
# Feature keys added after banks were already written, with the value those banks were fit with.
_FEATURE_KEY_DEFAULTS = {"backbone_dtype": "float32", "neighbourhood_zero_padding": False}


def _bank_feature_keys(meta: "BankMeta") -> dict:
    return {k: meta.expert.get(k, _FEATURE_KEY_DEFAULTS.get(k)) for k in FEATURE_KEYS}


@dataclass
class BankMeta:
    category: str
    dim: int
    size: int
    threshold: float
    expert: dict  # ExpertConfig as JSON
    normal_level: float = 0.0  # median anomaly-map value on held-out normal images
    calibration: dict = field(default_factory=dict)  # {"source": ..., "scores": [...]}
    fit: dict = field(default_factory=dict)  # images, patches, seconds, skipped files
    format: str = BANK_FORMAT
    version: int = BANK_VERSION

    def normalize(self, anomaly_map: np.ndarray) -> np.ndarray:
        """Anomaly map -> [0, 1] for the LMM and overlays: normal level 0, threshold 0.5."""
        return normalized_map(anomaly_map, self.threshold, self.normal_level)


def feature_signature(cfg: ExpertConfig) -> dict:
    data = cfg.model_dump(mode="json")
    return {k: data[k] for k in FEATURE_KEYS}


def save_bank(out: Path, vectors: np.ndarray, meta: BankMeta, cfg: ExpertConfig) -> None:
    """Write a bank directory atomically (a partial directory is never left as a bank)."""
    tmp = out.with_name(out.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    save_file({"vectors": torch.from_numpy(vectors)}, str(tmp / "memory.safetensors"))
    MemoryIndex.build(vectors, cfg.index.model_copy(update={"device": "cpu"})).save(tmp / "index.faiss")
    (tmp / "bank.json").write_text(json.dumps(asdict(meta), indent=2))
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)


def read_meta(bank_dir: Path) -> BankMeta:
    bank_dir = Path(bank_dir)
    path = bank_dir / "bank.json"
    if not path.is_file():
        raise BankError(f"{bank_dir}: not a memory bank (no bank.json); fit one with `myriad expert fit`")
    try:
        data = json.loads(path.read_text())
        meta = BankMeta(**data)
    except (json.JSONDecodeError, TypeError) as exc:
        raise BankError(f"{path}: unreadable bank metadata ({exc})") from None
    if meta.format != BANK_FORMAT:
        raise BankError(f"{path}: format {meta.format!r} is not {BANK_FORMAT!r}")
    if meta.version != BANK_VERSION:
        raise BankError(f"{path}: bank version {meta.version}, this release reads {BANK_VERSION}; refit")
    return meta


def check_compatible(meta: BankMeta, cfg: ExpertConfig, bank_dir: Path) -> None:
    want = feature_signature(cfg)
    have = _bank_feature_keys(meta)
    diffs = [f"expert.{k}: bank {have[k]!r}, config {want[k]!r}" for k in FEATURE_KEYS if have[k] != want[k]]
    if diffs:
        raise BankError(
            f"{bank_dir}: bank was fit with another expert config; refit it or load the matching "
            "config:\n  " + "\n  ".join(diffs)
        )


def bank_config(bank_dir: Path, base: ExpertConfig) -> ExpertConfig:
    """The config a bank was fit with (feature keys from the bank, the rest from ``base``)."""
    meta = read_meta(bank_dir)
    data = base.model_dump(mode="json")
    data.update(_bank_feature_keys(meta))
    return ExpertConfig.model_validate(data)


def load_vectors(bank_dir: Path, start: int = 0, stop: int | None = None) -> np.ndarray:
    """Rows [start, stop) of the bank's vectors (reads only that slice)."""
    path = Path(bank_dir) / "memory.safetensors"
    try:
        with safe_open(str(path), framework="pt") as f:
            sl = f.get_slice("vectors")
            n = sl.get_shape()[0]
            return sl[start : n if stop is None else stop].numpy()
    except (OSError, KeyError, Exception) as exc:  # safetensors raises its own error types
        raise BankError(f"{path}: cannot read bank vectors ({exc})") from None


def open_bank(bank_dir: Path, cfg: ExpertConfig, weights_dir: Path | None) -> tuple[PatchCore, BankMeta]:
    """An in-process PatchCore over a saved bank (sharded in-process if ``cfg.shards`` > 1)."""
    bank_dir = Path(bank_dir)
    meta = read_meta(bank_dir)
    check_compatible(meta, cfg, bank_dir)
    vectors = load_vectors(bank_dir)
    if vectors.shape != (meta.size, meta.dim):
        raise BankError(f"{bank_dir}: vectors {vectors.shape} disagree with bank.json ({meta.size}, {meta.dim})")
    if cfg.shards > 1:
        searcher = ShardedIndex(vectors, cfg.index, cfg.shards)
    elif (bank_dir / "index.faiss").is_file() and cfg.index.kind.value == meta.expert["index"]["kind"]:
        searcher = MemoryIndex.load(bank_dir / "index.faiss", cfg.index, vectors)
    else:
        searcher = MemoryIndex.build(vectors, cfg.index)
    expert = PatchCore(cfg, weights_dir, searcher)
    if expert.features.dim != meta.dim:
        raise BankError(f"{bank_dir}: bank dim {meta.dim} but the backbone gives {expert.features.dim}")
    return expert, meta
