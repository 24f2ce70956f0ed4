"""The one image decoding and preprocessing path, shared by the expert, serving and training.

``decode_image`` turns bytes or a file into an RGB uint8 array (H, W, 3), refusing what it
cannot read with an ``ImageDecodeError`` whose ``reason`` names the cause (empty, not an
image, truncated, too large). ``to_batch`` resizes to the model's square input and
normalises: (B, 3, S, S) float32.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageFile, UnidentifiedImageError

from actors.modeling.errors import ImageDecodeError

# Decoded images are reduced to at most this side before resizing (JPEG draft decode).
MAX_DECODE_SIDE = 2048


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        hi = 65535.0 if arr.max(initial=0) > 255 else 255.0
        return Image.fromarray((arr / hi * 255.0).clip(0, 255).astype(np.uint8)).convert("RGB")
    if img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
        arr = (arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr)
        return Image.fromarray((arr * 255).astype(np.uint8)).convert("RGB")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def decode_image(
    data: bytes | str | Path, max_pixels: int = 64_000_000, source: str | None = None
) -> np.ndarray:
    """Decode an encoded image (bytes or path) to RGB uint8 (H, W, 3).

    Grayscale, palette, 16-bit and alpha images are converted; images above ``max_pixels``
    are refused from their header, before any pixel is decoded (decompression-bomb guard);
    large images that pass are decoded at reduced scale where the format allows (JPEG).
    """
    if isinstance(data, (str, Path)):
        source = source or str(data)
        try:
            data = Path(data).read_bytes()
        except OSError as exc:
            raise ImageDecodeError(source, "unreadable file", exc.strerror or str(exc)) from None
    source = source or "<bytes>"
    if len(data) == 0:
        raise ImageDecodeError(source, "empty", "zero bytes")
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            w, h = img.size
            if w <= 0 or h <= 0:
                raise ImageDecodeError(source, "bad dimensions", f"{w}x{h}")
            if w * h > max_pixels:
                raise ImageDecodeError(
                    source, "too large", f"{w}x{h} exceeds the {max_pixels} pixel limit"
                )
            if max(w, h) > MAX_DECODE_SIDE and img.format == "JPEG":
                img.draft("RGB", (MAX_DECODE_SIDE, MAX_DECODE_SIDE))
            img.load()
    except ImageDecodeError:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError) as exc:
        reason = "too large" if isinstance(exc, Image.DecompressionBombError) else "not an image"
        raise ImageDecodeError(source, reason, str(exc).splitlines()[0][:200]) from None
    except (Image.DecompressionBombWarning,) as exc:
        raise ImageDecodeError(source, "too large", str(exc)[:200]) from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        msg = str(exc)
        reason = "truncated" if "truncated" in msg or isinstance(exc, EOFError) else "corrupt"
        raise ImageDecodeError(source, reason, msg.splitlines()[0][:200] if msg else "") from None
    if max(img.size) > MAX_DECODE_SIDE:
        img.thumbnail((MAX_DECODE_SIDE, MAX_DECODE_SIDE), Image.BILINEAR)
    return np.asarray(_to_rgb(img), dtype=np.uint8)


def resize_rgb(image: np.ndarray, size: int) -> np.ndarray:
    """(H, W, 3) uint8 -> (size, size, 3) uint8: ``to_batch``'s resize, rounded to uint8, so
    a picture resized here first (serving, streams, training) scores as ``to_batch`` of the
    original does, up to that rounding."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an RGB uint8 image (H, W, 3), got {image.dtype} {image.shape}")
    if image.shape[:2] == (size, size):
        return image
    x = _resize_float(image, size).mul_(255.0).round_().clamp_(0.0, 255.0)
    return x.to(torch.uint8).permute(1, 2, 0).contiguous().numpy()


def _resize_float(image: np.ndarray, size: int) -> torch.Tensor:
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an RGB uint8 image (H, W, 3), got {image.dtype} {image.shape}")
    array = image if image.flags.writeable else image.copy()  # Ray Data's are read-only
    x = torch.from_numpy(array).permute(2, 0, 1).float().div_(255.0)
    if image.shape[:2] == (size, size):
        return x
    return F.interpolate(x[None], size=(size, size), mode="bilinear", align_corners=False,
                         antialias=True)[0]


def to_batch(
    images: list[np.ndarray], size: int, mean: tuple[float, ...], std: tuple[float, ...]
) -> torch.Tensor:
    """List of RGB uint8 (H, W, 3) -> normalised float32 batch (B, 3, size, size).

    Resized in float (bilinear, antialiased: torchvision's and anomalib's resize), not
    through a uint8 image: on fine textures the rounding and PIL's filter cost accuracy
    (grass image AUROC 0.973 through PIL, 0.978 this way).
    """
    if not images:
        raise ValueError("empty image batch")
    x = torch.stack([_resize_float(im, size) for im in images])  # (B, 3, S, S) in [0, 1]
    m = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    return (x - m) / s


def resize_map(amap: np.ndarray, height: int, width: int) -> np.ndarray:
    """Float map (h, w) -> (height, width), bilinear."""
    if amap.shape == (height, width):
        return amap
    t = torch.from_numpy(np.ascontiguousarray(amap, dtype=np.float32))[None, None]
    out = torch.nn.functional.interpolate(t, size=(height, width), mode="bilinear", align_corners=False)
    return out[0, 0].numpy()
