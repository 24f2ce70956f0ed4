"""Anomaly-map pictures: a heat map blended over the image, as PNG bytes or an array."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw

from actors.modeling.preprocess import resize_map

# A compact "turbo"-like colour ramp: (position, RGB).
_STOPS = np.array(
    [
        (0.00, 48, 18, 59),
        (0.20, 70, 130, 240),
        (0.40, 30, 210, 190),
        (0.60, 160, 240, 60),
        (0.80, 250, 170, 30),
        (1.00, 180, 10, 5),
    ],
    dtype=np.float32,
)


def colormap(values: np.ndarray) -> np.ndarray:
    """Values in [0, 1] (H, W) -> RGB uint8 (H, W, 3)."""
    v = np.clip(np.nan_to_num(values), 0.0, 1.0)
    rgb = [np.interp(v, _STOPS[:, 0], _STOPS[:, c]) for c in (1, 2, 3)]
    return np.stack(rgb, axis=-1).astype(np.uint8)


def overlay(image: np.ndarray, norm_map: np.ndarray, alpha: float = 0.45, label: str | None = None) -> np.ndarray:
    """Blend a [0, 1] map (h, w) over an RGB uint8 image (H, W, 3); optional caption."""
    h, w = image.shape[:2]
    values = np.clip(resize_map(norm_map.astype(np.float32), h, w), 0.0, 1.0)
    heat = colormap(values).astype(np.float32)
    # Weight the heat by the map: normal regions (near 0) stay readable, anomalies glow.
    weight = np.clip(alpha + (1.0 - alpha) * (values - 0.5) * 2, 0.0, 0.85)[..., None] * np.clip(values * 3, 0, 1)[..., None]
    out = (image.astype(np.float32) * (1 - weight) + heat * weight).astype(np.uint8)
    if label:
        pic = Image.fromarray(out)
        draw = ImageDraw.Draw(pic)
        draw.rectangle((0, 0, w, 14), fill=(0, 0, 0))
        draw.text((3, 1), label, fill=(255, 255, 255))
        out = np.asarray(pic)
    return out


def to_png(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


def side_by_side(image: np.ndarray, norm_map: np.ndarray, label: str | None = None) -> np.ndarray:
    """The image and its overlay next to each other (H, 2W, 3)."""
    return np.concatenate([image, overlay(image, norm_map, label=label)], axis=1)
