"""A real-texture benchmark in the MVTec AD layout, built offline from scikit-image's photos.

scikit-image's wheel ships CC0 512x512 grayscale photos of ``brick``, ``grass`` and
``gravel`` (``skimage.data``; no network). Each photo is split in two: crops of the top half
make ``train/good``, crops of the bottom half make ``test/good`` and, with one synthetic defect
each (``training.anomaly_synthesis``), ``test/<kind>`` plus ``ground_truth/<kind>/*_mask.png``.
Train and test pixels never overlap. Crops sit at random positions, randomly flipped, and are
written as RGB with a fixed per-category tint (or as three equal channels with ``tint=False``).

Layout (per category)::

    <out>/<category>/train/good/000.png
    <out>/<category>/test/good/000.png
    <out>/<category>/test/<kind>/000.png
    <out>/<category>/ground_truth/<kind>/000_mask.png      # 0 / 255 uint8
    <out>/manifest.json

Test defects are meant to be visible to an inspector at the crop's resolution: cut-paste
defects paste *foreign material* (a crop of another texture photo; the same texture pasted on
itself is not a defect anyone could see on grass or gravel), and scratches are 5-7 px wide
gouges of one flat contrasting tone (``BENCH_CONFIG``). Training-data synthesis may use subtler settings.

Same seed, same arguments -> byte-identical files. Each category draws from its own seed
stream, so building a subset of categories writes the same files for those categories.

Example::

    summary = build_textures(Path("data/textures"), seed=0)
"""

from __future__ import annotations

import json
import logging
import shutil
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from skimage import data as skdata
from tqdm import tqdm

from actors.modeling.grid import GRID_LABELS
from training.anomaly_synthesis import (
    DEFECT_KINDS,
    GENERATORS,
    SynthConfig,
    SynthResult,
)

log = logging.getLogger(__name__)

GENERATOR_NAME = "myriad.textures"
MANIFEST = "manifest.json"

PHOTOS: dict[str, Callable[[], np.ndarray]] = {
    "brick": skdata.brick,
    "grass": skdata.grass,
    "gravel": skdata.gravel,
}
"""Offline CC0 texture photos shipped in the scikit-image wheel (512x512 uint8 grayscale)."""

TINTS: dict[str, tuple[float, float, float]] = {
    "brick": (1.0, 0.78, 0.64),
    "grass": (0.78, 1.0, 0.62),
    "gravel": (1.0, 0.96, 0.88),
}
"""Per-channel gains that colour each grayscale photo (max gain 1, so nothing clips)."""

FOREIGN: dict[str, str] = {"brick": "gravel", "grass": "brick", "gravel": "grass"}
"""Which photo supplies the foreign material pasted by cut-paste defects."""

BENCH_CONFIG = SynthConfig(scratch_radius_range=(2, 3), scratch_style="groove")
"""Benchmark defect settings: scratches are 5-7 px wide gouges (a flat contrasting tone) on
256 px crops; an additive light mark that keeps the grain reads as one more grass blade or
pebble edge, which no inspector would call a defect."""

_SPLIT_CODES = {"train": 0, "test_good": 1, "test_defect": 2, "paste_source": 3, "cells": 4}


def load_photo(category: str) -> np.ndarray:
    """The category's photo as (H, W) uint8 grayscale."""
    if category not in PHOTOS:
        raise ValueError(f"unknown texture category {category!r} (choose from {sorted(PHOTOS)})")
    photo = np.asarray(PHOTOS[category]())
    if photo.ndim == 3:  # an RGB photo: luminance
        photo = np.rint(photo[..., :3].astype(np.float32) @ [0.299, 0.587, 0.114])
    return photo.astype(np.uint8)


def _rng(seed: int, category: str, split: str, index: int) -> np.random.Generator:
    """An independent stream per (seed, category, split, image)."""
    return np.random.default_rng([seed, zlib.crc32(category.encode()), _SPLIT_CODES[split], index])


def _crop(photo: np.ndarray, rows: tuple[int, int], size: int, rng: np.random.Generator
          ) -> tuple[np.ndarray, dict[str, Any]]:
    """A random (size, size) crop inside photo rows ``[rows[0], rows[1])``, randomly flipped."""
    y = int(rng.integers(rows[0], rows[1] - size + 1))
    x = int(rng.integers(0, photo.shape[1] - size + 1))
    flip_v, flip_h = bool(rng.integers(2)), bool(rng.integers(2))
    crop = photo[y:y + size, x:x + size]
    if flip_v:
        crop = crop[::-1]
    if flip_h:
        crop = crop[:, ::-1]
    return np.ascontiguousarray(crop), {"origin": [y, x], "flip": [flip_v, flip_h]}


def _to_rgb(gray: np.ndarray, tint: tuple[float, float, float] | None) -> np.ndarray:
    """(H, W) uint8 -> (H, W, 3) uint8, tinted by per-channel gains when given."""
    if tint is None:
        return np.repeat(gray[..., None], 3, axis=2)
    rgb = gray[..., None].astype(np.float32) * np.asarray(tint, np.float32)  # (H, W, 3)
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def _save_png(array: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, format="PNG")


def _check_args(categories: Sequence[str], kinds: Sequence[str], crop_size: int,
                counts: dict[str, int]) -> None:
    unknown = [c for c in categories if c not in PHOTOS]
    if unknown or not categories:
        raise ValueError(f"unknown texture categories {unknown} (choose from {sorted(PHOTOS)})")
    bad = [k for k in kinds if k not in GENERATORS]
    if bad or not kinds:
        raise ValueError(f"unknown defect kinds {bad} (choose from {list(DEFECT_KINDS)})")
    for name, n in counts.items():
        if n < 0:
            raise ValueError(f"{name} must be >= 0, got {n}")
    if crop_size < 16:
        raise ValueError(f"crop_size must be >= 16, got {crop_size}")


class _CategoryBuilder:
    """Writes one category's folders and returns its manifest entry."""

    def __init__(self, out: Path, category: str, seed: int, crop_size: int,
                 kinds: Sequence[str], tint: bool, config: SynthConfig, bar: tqdm) -> None:
        self.out, self.category, self.seed = out, category, seed
        self.size, self.kinds, self.config, self.bar = crop_size, tuple(kinds), config, bar
        self.photo = load_photo(category)  # (512, 512) uint8
        h = self.photo.shape[0]
        if crop_size > h // 2 or crop_size > self.photo.shape[1]:
            raise ValueError(f"crop_size {crop_size} does not fit half of the {category} photo "
                             f"{self.photo.shape}: use crop_size <= {h // 2}")
        self.train_rows, self.test_rows = (0, h // 2), (h // 2, h)
        self.tint = TINTS.get(category, (1.0, 1.0, 1.0)) if tint else None
        self.images: list[dict[str, Any]] = []

    def _foreign(self, index: int) -> np.ndarray:
        other = FOREIGN.get(self.category, next(p for p in PHOTOS if p != self.category))
        rng = _rng(self.seed, self.category, "paste_source", index)
        gray, _ = _crop(load_photo(other), self.test_rows, self.size, rng)
        return _to_rgb(gray, TINTS.get(other, (1.0, 1.0, 1.0)) if self.tint else None)

    def _good(self, split: str, index: int) -> tuple[np.ndarray, dict[str, Any]]:
        rows = self.train_rows if split == "train" else self.test_rows
        rng = _rng(self.seed, self.category, split, index)
        gray, where = _crop(self.photo, rows, self.size, rng)
        return _to_rgb(gray, self.tint), where

    def _record(self, rel: str, split: str, kind: str, where: dict[str, Any],
                res: SynthResult | None = None, mask_rel: str | None = None) -> None:
        entry: dict[str, Any] = {"path": rel, "split": split, "kind": kind, **where,
                                 "positions": [], "mask": None, "area": 0.0}
        if res is not None:
            entry.update(positions=res.positions, mask=mask_rel,
                         area=round(float(res.mask.mean()), 6))
        self.images.append(entry)
        self.bar.update(1)

    def write_good(self, split: str, n: int) -> None:
        folder = "train/good" if split == "train" else "test/good"
        for i in range(n):
            rgb, where = self._good("train" if split == "train" else "test_good", i)
            rel = f"{self.category}/{folder}/{i:03d}.png"
            _save_png(rgb, self.out / rel)
            self._record(rel, split, "good", where)

    def write_defects(self, n: int) -> dict[str, int]:
        """``n`` defect images, kinds in turn, centres cycling over a shuffled 3x3 grid."""
        cells = _rng(self.seed, self.category, "cells", 0).permutation(len(GRID_LABELS))
        per_kind = dict.fromkeys(self.kinds, 0)
        for i in range(n):
            kind = self.kinds[i % len(self.kinds)]
            rng = _rng(self.seed, self.category, "test_defect", i)
            gray, where = _crop(self.photo, self.test_rows, self.size, rng)
            rgb = _to_rgb(gray, self.tint)  # (S, S, 3)
            row, col = divmod(int(cells[i % len(cells)]), 3)
            center = ((row + rng.uniform()) * self.size / 3, (col + rng.uniform()) * self.size / 3)
            kwargs: dict[str, Any] = {"config": self.config, "center": center}
            if kind == "cut_paste":  # foreign material: a held-out crop of another photo
                kwargs["source"] = self._foreign(i)
            res = GENERATORS[kind](rgb, rng, **kwargs)
            j = per_kind[kind]
            per_kind[kind] += 1
            rel = f"{self.category}/test/{kind}/{j:03d}.png"
            mask_rel = f"{self.category}/ground_truth/{kind}/{j:03d}_mask.png"
            _save_png(res.image, self.out / rel)
            _save_png(res.mask.astype(np.uint8) * 255, self.out / mask_rel)
            self._record(rel, "test", kind, where, res, mask_rel)
        return per_kind


def _clear_category(out: Path, category: str) -> None:
    """Remove only the folders this builder writes for ``category``."""
    for sub in ("train", "test", "ground_truth"):
        path = out / category / sub
        if path.is_dir():
            shutil.rmtree(path)


def _read_manifest(out: Path) -> dict[str, Any]:
    path = out / MANIFEST
    if not path.is_file():
        return {}
    try:
        old = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        log.warning("ignoring unreadable %s: %s", path, exc)
        return {}
    return old if isinstance(old, dict) and old.get("generator") == GENERATOR_NAME else {}


def build_textures(
    out: Path,
    seed: int = 0,
    categories: Sequence[str] = ("brick", "grass", "gravel"),
    crop_size: int = 256,
    n_train: int = 40,
    n_test_good: int = 20,
    n_test_defect: int = 30,
    kinds: Sequence[str] = DEFECT_KINDS,
    tint: bool = True,
    config: SynthConfig = BENCH_CONFIG,
    progress: bool = True,
) -> dict[str, Any]:
    """Build the real-texture benchmark under ``out`` (MVTec AD layout) and return a summary.

    Only the given categories' ``train``, ``test`` and ``ground_truth`` folders are
    (re)written; other content of ``out`` is left alone and ``manifest.json`` keeps the
    entries of categories built earlier.

    Args:
        out: root folder; created when missing.
        seed: the seed; same seed and arguments give byte-identical files.
        categories: photos to use (keys of ``PHOTOS``).
        crop_size: side of the square crops; at most half the photo's height (256).
        n_train: ``train/good`` images per category (from the photo's top half).
        n_test_good: ``test/good`` images per category (from the bottom half).
        n_test_defect: defect images per category in total, the kinds taking turns
            (30 with the five kinds -> 6 each).
        kinds: defect kinds, each gets ``test/<kind>`` and ``ground_truth/<kind>``.
        tint: colour the grayscale photos with a fixed per-category tint.
        config: defect sizes and strengths.
        progress: show a tqdm bar.

    Returns:
        ``{"out", "seed", "crop_size", "categories": {name: {"train/good": n, ...}},
        "n_images", "manifest"}``.
    """
    out = Path(out)
    categories, kinds = tuple(categories), tuple(kinds)
    _check_args(categories, kinds, crop_size,
                {"n_train": n_train, "n_test_good": n_test_good, "n_test_defect": n_test_defect})
    out.mkdir(parents=True, exist_ok=True)
    manifest = _read_manifest(out)
    entries: dict[str, Any] = dict(manifest.get("categories", {}))
    summary: dict[str, dict[str, int]] = {}
    total = len(categories) * (n_train + n_test_good + n_test_defect)
    with tqdm(total=total, desc="textures", unit="img", disable=not progress) as bar:
        for category in categories:
            builder = _CategoryBuilder(out, category, seed, crop_size, kinds, tint, config, bar)
            _clear_category(out, category)
            builder.write_good("train", n_train)
            builder.write_good("test", n_test_good)
            per_kind = builder.write_defects(n_test_defect)
            counts = {"train/good": n_train, "test/good": n_test_good,
                      **{f"test/{k}": v for k, v in per_kind.items()}}
            summary[category] = counts
            entries[category] = {
                "source": f"skimage.data.{category}() (CC0)",
                "seed": seed,
                "crop_size": crop_size,
                "tint": list(builder.tint) if builder.tint else None,
                "split": {"train_rows": list(builder.train_rows),
                          "test_rows": list(builder.test_rows)},
                "counts": counts,
                "images": builder.images,
            }
            log.info("textures: wrote %s (%s)", out / category, counts)
    manifest = {"generator": GENERATOR_NAME, "version": 1, "layout": "mvtec_ad", "seed": seed,
                "categories": {k: entries[k] for k in sorted(entries)}}
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    return {"out": str(out), "seed": seed, "crop_size": crop_size, "categories": summary,
            "n_images": total, "manifest": str(out / MANIFEST)}
