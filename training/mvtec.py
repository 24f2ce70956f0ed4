"""Image folders in the MVTec AD layout (DESIGN.md 3), read defensively.

    <root>/<category>/train/good/*.png
    <root>/<category>/test/<good|defect_type>/*.png
    <root>/<category>/ground_truth/<defect_type>/<stem>_mask.png   (optional)

Unreadable files are reported by name and skipped; they never stop a run.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from actors.modeling.errors import DatasetError, ImageDecodeError
from actors.modeling.preprocess import decode_image

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}


@dataclass(frozen=True)
class Sample:
    path: Path
    defect_type: str  # "good" or the defect folder name
    mask_path: Path | None

    @property
    def is_anomalous(self) -> bool:
        return self.defect_type != "good"


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


@dataclass(frozen=True)
class Category:
    root: Path
    name: str

    @property
    def path(self) -> Path:
        return self.root / self.name

    def train_good(self) -> list[Path]:
        folder = self.path / "train" / "good"
        if not folder.is_dir():
            raise DatasetError(f"{folder}: missing; a category needs train/good/ with normal images")
        files = _images(folder)
        if not files:
            raise DatasetError(f"{folder}: no images (expected .png/.jpg files of normal parts)")
        return files

    def test_samples(self) -> list[Sample]:
        folder = self.path / "test"
        if not folder.is_dir():
            raise DatasetError(f"{folder}: missing; evaluation needs test/<good|defect>/ folders")
        samples = []
        for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
            for img in _images(sub):
                mask = None
                if sub.name != "good":
                    cand = self.path / "ground_truth" / sub.name / f"{img.stem}_mask.png"
                    mask = cand if cand.is_file() else None
                samples.append(Sample(img, sub.name, mask))
        if not samples:
            raise DatasetError(f"{folder}: no test images")
        return samples


def open_category(root: Path, name: str) -> Category:
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"dataset folder {root} does not exist")
    cat = Category(root, name)
    if not cat.path.is_dir():
        found = sorted(p.name for p in root.iterdir() if (p / "train").is_dir() or (p / "test").is_dir())
        raise DatasetError(f"category {name!r} not found in {root}; categories there: {found or 'none'}")
    return cat


def load_mask(path: Path | None, shape: tuple[int, int]) -> np.ndarray:
    """Binary mask (H, W) resized (nearest) to ``shape``; all-false when there is none."""
    if path is None:
        return np.zeros(shape, dtype=bool)
    with Image.open(path) as img:
        m = img.convert("L")
        if m.size != (shape[1], shape[0]):
            m = m.resize((shape[1], shape[0]), Image.NEAREST)
        return np.asarray(m) > 127


def iter_images(
    paths: list[Path], max_pixels: int, skipped: list[dict], workers: int = 2
) -> Iterator[tuple[Path, np.ndarray]]:
    """Decode images in a small thread pool (in order); failures go to ``skipped``."""

    def load(path: Path):
        try:
            return path, decode_image(path, max_pixels=max_pixels)
        except ImageDecodeError as exc:
            return path, exc

    with ThreadPoolExecutor(max_workers=workers) as pool:
        for path, result in pool.map(load, paths):
            if isinstance(result, ImageDecodeError):
                log.warning("skipping %s: %s", path, result.reason)
                skipped.append({"path": str(path), "reason": result.reason, "detail": str(result)})
                continue
            yield path, result


def batched(it, size: int):
    batch = []
    for item in it:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch
