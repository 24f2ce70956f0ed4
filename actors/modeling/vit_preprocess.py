"""The one preprocessing path of the Myriad LMM (training and serving), saved with the model.

RGB uint8 images (H, W, 3) and their expert maps (H, W) in [0, 1] -> ``ViTInputs``:
normalised pixels (B, 3, S, S) and maps (B, 1, S, S), both resized to the ViT input S with
the expert's resize functions (``actors.modeling.preprocess``). A map must have its image's
size (no silent broadcasting), be finite and lie in [0, 1]. ``preprocessing.json`` in a
model directory records S, mean and std; loading refuses one that disagrees with the config.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from actors.modeling.lmm_errors import CheckpointError, ModelInputError
from actors.modeling.preprocess import resize_map, to_batch
from configs.model_schema import VisionConfig

PREPROCESSING_FILE = "preprocessing.json"


@dataclass(frozen=True)
class ViTInputs:
    pixel_values: torch.Tensor  # (B, 3, S, S) float32, normalised
    maps: torch.Tensor  # (B, 1, S, S) float32 in [0, 1]
    map_given: tuple[bool, ...]  # False where the map was all zeros because none was given


@dataclass(frozen=True)
class ViTPreprocessor:
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    resize: str = "bilinear-square"  # whole image resized to S x S (no crop: defects at edges)

    @classmethod
    def from_vision_config(cls, cfg: VisionConfig) -> "ViTPreprocessor":
        return cls(cfg.image_size, tuple(cfg.image_mean), tuple(cfg.image_std))

    def save(self, directory: Path) -> None:
        (Path(directory) / PREPROCESSING_FILE).write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, directory: Path, expected: "ViTPreprocessor | None" = None) -> "ViTPreprocessor":
        path = Path(directory) / PREPROCESSING_FILE
        try:
            data = json.loads(path.read_text())
            pre = cls(int(data["image_size"]), tuple(data["mean"]), tuple(data["std"]), data["resize"])
        except (OSError, KeyError, ValueError, TypeError) as exc:
            raise CheckpointError(f"{path}: unreadable preprocessing config ({exc})") from None
        if expected is not None and pre != expected:
            raise CheckpointError(f"{path}: preprocessing {pre} does not match the model config {expected}")
        return pre

    def __call__(self, images: list[np.ndarray], maps: list[np.ndarray | None] | None = None) -> ViTInputs:
        """images: list of (H, W, 3) uint8; maps: list of (H, W) float in [0, 1] or None."""
        if not images:
            raise ModelInputError("empty image batch")
        maps = list(maps) if maps is not None else [None] * len(images)
        if len(maps) != len(images):
            raise ModelInputError(f"{len(images)} images but {len(maps)} maps")
        for i, img in enumerate(images):
            if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
                raise ModelInputError(f"image {i}: expected RGB uint8 (H, W, 3), got {img.dtype} {img.shape}")
        pixel_values = to_batch(images, self.image_size, self.mean, self.std)
        s = self.image_size
        out = []
        for i, (img, m) in enumerate(zip(images, maps)):
            if m is None:
                out.append(np.zeros((s, s), np.float32))
                continue
            m = np.asarray(m, dtype=np.float32)
            check_map(m, img.shape[:2], f"map {i}")
            out.append(np.clip(resize_map(m, s, s), 0.0, 1.0))
        maps_t = torch.from_numpy(np.stack(out)).unsqueeze(1)  # (B, 1, S, S)
        return ViTInputs(pixel_values, maps_t, tuple(m is not None for m in maps))


def check_map(m: np.ndarray, hw: tuple[int, int], what: str = "map") -> None:
    if m.shape != tuple(hw):
        raise ModelInputError(f"{what}: shape {m.shape} does not match the image size {tuple(hw)}")
    if not np.isfinite(m).all():
        raise ModelInputError(f"{what}: contains NaN or infinite values")
    lo, hi = float(m.min()), float(m.max())
    if lo < 0.0 or hi > 1.0:
        raise ModelInputError(f"{what}: values must lie in [0, 1], got [{lo:.4g}, {hi:.4g}]")
