import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from actors.modeling.errors import ImageDecodeError
from actors.modeling.preprocess import decode_image, to_batch


def _encode(img: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height (a decompression bomb's calling card)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 16)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def test_modes_become_rgb():
    rgb = np.random.default_rng(0).integers(0, 255, (20, 30, 3), dtype=np.uint8)
    assert np.array_equal(decode_image(_encode(Image.fromarray(rgb))), rgb)
    gray = decode_image(_encode(Image.fromarray(rgb[..., 0])))
    assert gray.shape == (20, 30, 3) and np.array_equal(gray[..., 0], gray[..., 2])
    pal = decode_image(_encode(Image.fromarray(rgb).convert("P")))
    assert pal.shape == (20, 30, 3) and pal.dtype == np.uint8
    sixteen = np.full((8, 8), 65535, dtype=np.uint16)
    out16 = decode_image(_encode(Image.fromarray(sixteen)))
    assert out16.max() == 255 and out16.shape == (8, 8, 3)
    rgba = Image.fromarray(np.dstack([rgb, np.full((20, 30), 255, np.uint8)]), "RGBA")
    assert np.array_equal(decode_image(_encode(rgba)), rgb)


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"", "empty"),
        (b"definitely not an image" * 10, "not an image"),
        (_png_header_only(20000, 20000), "too large"),
    ],
)
def test_bad_bytes(data, reason):
    with pytest.raises(ImageDecodeError) as err:
        decode_image(data, source="frame-1")
    assert err.value.reason == reason
    assert "frame-1" in str(err.value)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated(fmt):
    img = Image.fromarray(np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    data = _encode(img, fmt)
    with pytest.raises(ImageDecodeError) as err:
        decode_image(data[: len(data) // 2])
    assert err.value.reason in {"truncated", "corrupt"}


def test_large_image_is_reduced():
    big = Image.new("RGB", (4000, 3000), (10, 20, 30))
    out = decode_image(_encode(big, "JPEG"))
    assert max(out.shape[:2]) <= 2048


def test_unreadable_path(tmp_path):
    with pytest.raises(ImageDecodeError, match="unreadable file"):
        decode_image(tmp_path / "nope.png")


def test_batch_shapes_and_errors():
    imgs = [np.zeros((10, 20, 3), np.uint8), np.full((40, 40, 3), 255, np.uint8)]
    x = to_batch(imgs, 32, (0.5,) * 3, (0.5,) * 3)
    assert x.shape == (2, 3, 32, 32)
    assert float(x[0].min()) == -1.0 and float(x[1].max()) == 1.0
    with pytest.raises(ValueError, match="empty image batch"):
        to_batch([], 32, (0.5,) * 3, (0.5,) * 3)
    with pytest.raises(ValueError, match="RGB uint8"):
        to_batch([np.zeros((10, 10), np.uint8)], 32, (0.5,) * 3, (0.5,) * 3)
