"""Synthetic defects with pixel masks, as AnomalyGPT / Myriad train (AnomalyGPT sec. 3.4, NSA).

Every generator takes an RGB uint8 image (H, W, 3) and a ``numpy.random.Generator`` and
returns a :class:`SynthResult`: the defective image, its (H, W) bool mask, the kind and the
3x3 grid positions of the mask (``actors.modeling.grid``). Results are deterministic given
the generator's state. Kinds:

- ``scratch``: a thin random curved stroke, lighter or darker than its surroundings.
- ``hole``: a dark irregular blob, shaded darker towards its centre.
- ``stain``: a smooth irregular coloured blob, partially transparent.
- ``cut_paste``: a transformed patch from elsewhere in the same (or another) image, pasted
  with alpha blending or Poisson (seamless) blending solved on the mask's bounding box.
- ``color_shift``: a region with a hue / saturation / brightness shift (a visible tint and
  brightness change on grayscale-looking images).

Shapes are irregular blobs (an ellipse perturbed by smoothed noise, thresholded to the drawn
area), centred anywhere in the image so every grid cell gets defects. All work happens on the
defect's bounding box, so a defect on a 256x256 image costs a few milliseconds.

Example::

    rng = np.random.default_rng(0)
    res = synthesize(image, rng)          # res.image (H, W, 3) uint8, res.mask (H, W) bool
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, NamedTuple

import numpy as np
from scipy import ndimage, sparse
from scipy.sparse.linalg import splu
from skimage.color import hsv2rgb, rgb2hsv

from actors.modeling.grid import mask_to_positions

log = logging.getLogger(__name__)

DEFECT_KINDS: tuple[str, ...] = ("scratch", "hole", "stain", "cut_paste", "color_shift")

Blend = Literal["alpha", "poisson"]
Center = tuple[float, float]


class SynthResult(NamedTuple):
    """One synthetic defect."""

    image: np.ndarray  # (H, W, 3) uint8, the defective image
    mask: np.ndarray  # (H, W) bool, True on the defect
    kind: str  # one of DEFECT_KINDS
    positions: list[str]  # grid labels covered by the mask (actors.modeling.grid)


@dataclass(frozen=True)
class SynthConfig:
    """Sizes and strengths of synthetic defects.

    Attributes:
        area_range: blob defects' area as a fraction of the image area, drawn uniformly.
        scratch_length_range: scratch length as a fraction of the image's shorter side.
        scratch_radius_range: scratch half-width in pixels (stroke width ``2 * r + 1``).
        poisson_prob: chance that ``cut_paste`` uses Poisson blending when ``blend`` is None.
        min_visible: mean change (grey levels, max over channels) inside the mask that
            ``cut_paste`` aims for; it tries up to ``paste_tries`` source patches and keeps the
            first that reaches it (else the strongest), so pastes on flat areas stay visible.
        paste_tries: source patches ``cut_paste`` may try.
        scratch_style: ``"additive"`` brightens/darkens the surface along the stroke (its
            grain shows through, a light mark); ``"groove"`` replaces the surface with a flat,
            contrasting tone (a gouge through the finish), continuous along its length.
    """

    area_range: tuple[float, float] = (0.005, 0.06)
    scratch_length_range: tuple[float, float] = (0.2, 0.6)
    scratch_radius_range: tuple[int, int] = (1, 2)
    poisson_prob: float = 0.5
    min_visible: float = 15.0
    paste_tries: int = 4
    scratch_style: str = "additive"

    def __post_init__(self) -> None:
        (a0, a1), (l0, l1), (r0, r1) = (
            self.area_range, self.scratch_length_range, self.scratch_radius_range)
        checks = {
            "area_range (0 < lo <= hi < 1)": 0.0 < a0 <= a1 < 1.0,
            "scratch_length_range (0 < lo <= hi)": 0.0 < l0 <= l1,
            "scratch_radius_range (0 <= lo <= hi)": 0 <= r0 <= r1,
            "poisson_prob (in [0, 1])": 0.0 <= self.poisson_prob <= 1.0,
            "paste_tries (>= 1)": self.paste_tries >= 1,
            "scratch_style (additive|groove)": self.scratch_style in ("additive", "groove"),
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"invalid SynthConfig {bad}: {self}")


DEFAULT_CONFIG = SynthConfig()


# --------------------------------------------------------------------------- shapes


def _check_image(image: np.ndarray) -> None:
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an RGB uint8 image (H, W, 3), got {image.dtype} {image.shape}")


def _pick_center(h: int, w: int, rng: np.random.Generator, center: Center | None) -> Center:
    if center is None:
        return float(rng.uniform(0, h)), float(rng.uniform(0, w))
    cy, cx = center
    if not (0 <= cy < h and 0 <= cx < w):
        raise ValueError(f"center {center} lies outside the {h}x{w} image")
    return float(cy), float(cx)


def _bbox(mask: np.ndarray, pad: int) -> tuple[slice, slice]:
    """Bounding box of a non-empty (H, W) mask, grown by ``pad`` and clipped to the image."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    h, w = mask.shape
    return (slice(max(rows[0] - pad, 0), min(rows[-1] + pad + 1, h)),
            slice(max(cols[0] - pad, 0), min(cols[-1] + pad + 1, w)))


def _smooth_noise(shape: tuple[int, int], sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Gaussian-smoothed white noise scaled to unit standard deviation, (h, w) float32."""
    n = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma)
    return n / (n.std() + 1e-6)


def _keep_largest(mask: np.ndarray) -> np.ndarray:
    lab, n = ndimage.label(mask)
    if n > 1:
        sizes = np.bincount(lab.ravel())[1:]
        mask = lab == (int(np.argmax(sizes)) + 1)
    return ndimage.binary_fill_holes(mask)


def random_blob(
    h: int, w: int, area_px: int, rng: np.random.Generator, center: Center | None = None,
) -> np.ndarray:
    """Irregular blob of about ``area_px`` pixels (fewer where it meets the image border).

    A rotated ellipse of random aspect is perturbed by two octaves of smoothed noise and
    thresholded at the ``area_px``-th highest value, keeping the largest component.

    Returns:
        (H, W) bool mask, never empty.
    """
    cy, cx = _pick_center(h, w, rng, center)
    aspect = float(np.exp(rng.uniform(-0.8, 0.8)))
    r = np.sqrt(max(area_px, 4) / np.pi)
    ry, rx = r * np.sqrt(aspect), r / np.sqrt(aspect)
    theta = rng.uniform(0, np.pi)
    half = 1.7 * max(rx, ry) + 2
    y0, y1 = max(int(cy - half), 0), min(int(cy + half) + 1, h)
    x0, x1 = max(int(cx - half), 0), min(int(cx + half) + 1, w)
    ys, xs = np.mgrid[y0:y1, x0:x1].astype(np.float32)  # (h', w') each
    ys -= cy
    xs -= cx
    u = xs * np.cos(theta) + ys * np.sin(theta)
    v = -xs * np.sin(theta) + ys * np.cos(theta)
    field = -((u / rx) ** 2 + (v / ry) ** 2)  # (h', w'), 0 at the centre
    shape = field.shape
    field += rng.uniform(0.4, 1.1) * _smooth_noise(shape, max(r / 2.5, 1.0), rng)
    field += 0.15 * _smooth_noise(shape, max(r / 8.0, 0.7), rng)
    k = int(np.clip(area_px, 1, field.size))
    thr = np.partition(field.ravel(), -k)[-k]
    local = _keep_largest(field >= thr)
    mask = np.zeros((h, w), bool)
    mask[y0:y1, x0:x1] = local
    return mask


def random_stroke(
    h: int, w: int, length: float, radius: int, rng: np.random.Generator,
    center: Center | None = None,
) -> np.ndarray:
    """Thin smooth random curve of about ``length`` pixels through ``center``.

    Returns:
        (H, W) bool mask of the stroke, ``2 * radius + 1`` pixels wide, never empty.
    """
    cy, cx = _pick_center(h, w, rng, center)
    n = max(int(length), 4)
    turn = ndimage.gaussian_filter1d(rng.standard_normal(n), sigma=n / 6.0)  # (n,)
    turn *= rng.uniform(0.0, 1.6) / (np.abs(turn).sum() + 1e-9)  # total turning <= ~90 deg
    angles = rng.uniform(0, 2 * np.pi) + np.cumsum(turn)
    py = np.cumsum(np.sin(angles))
    px = np.cumsum(np.cos(angles))
    py += cy - py[n // 2]
    px += cx - px[n // 2]
    iy, ix = np.rint(py).astype(int), np.rint(px).astype(int)
    ok = (iy >= 0) & (iy < h) & (ix >= 0) & (ix < w)
    mask = np.zeros((h, w), bool)
    mask[iy[ok], ix[ok]] = True
    mask[min(int(cy), h - 1), min(int(cx), w - 1)] = True
    if radius > 0:
        sl = _bbox(mask, radius)
        disk = np.hypot(*np.mgrid[-radius:radius + 1, -radius:radius + 1]) <= radius + 0.3
        mask[sl] = ndimage.binary_dilation(mask[sl], structure=disk)
    return mask


def _blob_for(image: np.ndarray, rng: np.random.Generator, config: SynthConfig,
              center: Center | None) -> np.ndarray:
    h, w = image.shape[:2]
    frac = rng.uniform(*config.area_range)
    return random_blob(h, w, int(round(frac * h * w)), rng, center)


def _soft(mask_win: np.ndarray, sigma: float) -> np.ndarray:
    """Soft alpha (h, w, 1) float32 from a bool window: blurred, 1 deep inside the mask."""
    a = 1.5 * ndimage.gaussian_filter(mask_win.astype(np.float32), sigma)
    return np.clip(np.where(mask_win, np.maximum(a, 0.6), a), 0, 1)[..., None]


def _result(image: np.ndarray, out_win: np.ndarray, sl: tuple[slice, slice],
            mask: np.ndarray, kind: str) -> SynthResult:
    out = image.copy()
    out[sl] = np.clip(np.rint(out_win), 0, 255).astype(np.uint8)
    return SynthResult(out, mask, kind, mask_to_positions(mask))


# --------------------------------------------------------------------------- defects


def scratch(image: np.ndarray, rng: np.random.Generator, config: SynthConfig = DEFAULT_CONFIG,
            center: Center | None = None) -> SynthResult:
    """A thin random curved scratch, lighter or darker than the surface."""
    _check_image(image)
    h, w = image.shape[:2]
    length = rng.uniform(*config.scratch_length_range) * min(h, w)
    radius = int(rng.integers(config.scratch_radius_range[0], config.scratch_radius_range[1] + 1))
    mask = random_stroke(h, w, length, radius, rng, center)
    sl = _bbox(mask, 2)
    win = image[sl].astype(np.float32)  # (h', w', 3)
    m = mask[sl]
    level = float(win[m].mean())
    delta = rng.uniform(60, 110) * (1.0 if level < 128 else -1.0)  # towards headroom
    alpha = ndimage.gaussian_filter(m.astype(np.float32), 0.6)
    alpha = np.where(m, np.maximum(alpha / alpha.max(), 0.6), alpha)
    if config.scratch_style == "groove":
        tone = np.clip(level + delta * 1.3, 0, 255)  # one flat tone, far from the surface
        a = (np.clip(alpha, 0, 1) * rng.uniform(0.85, 0.95))[..., None]
        return _result(image, win * (1 - a) + a * tone, sl, mask, "scratch")
    along = 0.75 + 0.25 * np.tanh(_smooth_noise(m.shape, max(length / 10, 1.0), rng))
    return _result(image, win + (alpha * along)[..., None] * delta, sl, mask, "scratch")


def hole(image: np.ndarray, rng: np.random.Generator, config: SynthConfig = DEFAULT_CONFIG,
         center: Center | None = None) -> SynthResult:
    """A dark irregular hole, shaded darker towards its centre, with a faint lit rim."""
    _check_image(image)
    mask = _blob_for(image, rng, config, center)
    sl = _bbox(mask, 3)
    win = image[sl].astype(np.float32)
    m = mask[sl]
    depth = ndimage.distance_transform_edt(m)
    depth = ndimage.gaussian_filter(depth / (depth.max() + 1e-6), 1.0)  # (h', w') 0 rim -> 1
    level = float(win[m].mean())
    gy, gx = np.gradient(depth)
    angle = rng.uniform(0, 2 * np.pi)
    light = np.clip(gy * np.sin(angle) + gx * np.cos(angle), 0, None) * 4  # lit inner wall
    dark = level * (0.05 + 0.4 * (1 - depth) ** 1.5) * (1 + light)  # (h', w')
    texture = 0.15 * (win - win.mean(axis=(0, 1)))  # keep a little of the surface grain
    shade = dark[..., None] + texture
    alpha = _soft(m, 1.0)
    return _result(image, win * (1 - alpha) + alpha * shade, sl, mask, "hole")


def stain(image: np.ndarray, rng: np.random.Generator, config: SynthConfig = DEFAULT_CONFIG,
          center: Center | None = None) -> SynthResult:
    """A smooth irregular coloured blob, partially transparent, denser at its rim."""
    _check_image(image)
    mask = _blob_for(image, rng, config, center)
    sl = _bbox(mask, 5)
    win = image[sl].astype(np.float32)
    m = mask[sl]
    level = float(win[m].mean())
    value = rng.uniform(0.12, 0.35) if level > 110 else rng.uniform(0.7, 0.95)
    hsv = np.array([[[rng.uniform(0, 1), rng.uniform(0.35, 0.8), value]]])
    color = hsv2rgb(hsv).reshape(3).astype(np.float32) * 255  # (3,)
    opacity = rng.uniform(0.5, 0.8)
    edge = ndimage.distance_transform_edt(m)
    ring = np.exp(-edge / 2.0) * m  # coffee-ring darkening near the edge
    density = 0.8 + 0.2 * np.tanh(_smooth_noise(m.shape, 3.0, rng))
    alpha = _soft(m, 1.5) * np.clip(opacity * density * (1 + 0.3 * ring), 0, 1)[..., None]
    return _result(image, win * (1 - alpha) + alpha * color, sl, mask, "stain")


def color_shift(image: np.ndarray, rng: np.random.Generator,
                config: SynthConfig = DEFAULT_CONFIG, center: Center | None = None) -> SynthResult:
    """A region whose hue, saturation and brightness are shifted (tinted on grey surfaces)."""
    _check_image(image)
    mask = _blob_for(image, rng, config, center)
    sl = _bbox(mask, 4)
    win = image[sl].astype(np.float32)
    m = mask[sl]
    hsv = rgb2hsv(win / 255.0)  # (h', w', 3) in [0, 1]
    sign = rng.choice([-1.0, 1.0])
    hsv[..., 0] = (hsv[..., 0] + sign * rng.uniform(0.1, 0.4)) % 1.0
    hsv[..., 1] = np.clip(hsv[..., 1] * rng.uniform(1.2, 1.8) + rng.uniform(0.25, 0.5), 0, 1)
    bright = float(win[m].mean()) < 128
    gain = rng.uniform(1.3, 1.6) if bright else rng.uniform(0.55, 0.75)
    hsv[..., 2] = np.clip(hsv[..., 2] * gain, 0, 1)
    if bright:  # white-ish tint on dark surfaces that gain alone cannot lift
        hsv[..., 2] = np.maximum(hsv[..., 2], rng.uniform(0.25, 0.4))
    shifted = hsv2rgb(hsv).astype(np.float32) * 255
    alpha = _soft(m, 1.5)
    return _result(image, win * (1 - alpha) + alpha * shifted, sl, mask, "color_shift")


def cut_paste(image: np.ndarray, rng: np.random.Generator, config: SynthConfig = DEFAULT_CONFIG,
              center: Center | None = None, source: np.ndarray | None = None,
              blend: Blend | None = None) -> SynthResult:
    """Paste a transformed patch from ``source`` (default: elsewhere in ``image``).

    The patch is rescaled (x0.5-0.7 or x1.5-2), flipped or rotated by 90 degrees and its gain
    jittered, then blended onto an irregular blob with alpha blending, or with Poisson blending
    (the patch's gradients, the target's values on the blob's border).
    """
    _check_image(image)
    src = image if source is None else source
    _check_image(src)
    if blend is None:
        blend = "poisson" if rng.uniform() < config.poisson_prob else "alpha"
    if blend not in ("alpha", "poisson"):
        raise ValueError(f"blend must be 'alpha' or 'poisson', got {blend!r}")
    mask = _blob_for(image, rng, config, center)
    sl = _bbox(mask, 2)
    bh, bw = sl[0].stop - sl[0].start, sl[1].stop - sl[1].start
    win = image[sl].astype(np.float32)  # (bh, bw, 3)
    m = mask[sl]
    alpha = _soft(m, 1.0)
    best: tuple[float, np.ndarray] | None = None
    for _ in range(config.paste_tries):
        patch = _source_patch(src, (bh, bw), sl if source is None else None, rng)  # (bh, bw, 3)
        if blend == "poisson":
            out = poisson_blend(win, patch, m)
        else:
            out = win * (1 - alpha) + alpha * patch
        change = float(np.abs(np.clip(out, 0, 255) - win).max(axis=2)[m].mean())
        if best is None or change > best[0]:
            best = (change, out)
        if change >= config.min_visible:
            break
    return _result(image, best[1], sl, mask, "cut_paste")


def _source_patch(src: np.ndarray, size: tuple[int, int], avoid: tuple[slice, slice] | None,
                  rng: np.random.Generator) -> np.ndarray:
    """A transformed (bh, bw, 3) float32 patch from ``src``, away from ``avoid`` when given."""
    bh, bw = size
    sh, sw = src.shape[:2]
    scale = rng.uniform(0.5, 0.7) if rng.uniform() < 0.5 else rng.uniform(1.5, 2.0)
    ph = int(np.clip(round(bh / scale), 2, sh))
    pw = int(np.clip(round(bw / scale), 2, sw))
    y, x = int(rng.integers(0, sh - ph + 1)), int(rng.integers(0, sw - pw + 1))
    if avoid is not None:  # a few tries to take the patch from a different place
        for _ in range(8):
            if abs(y - avoid[0].start) + abs(x - avoid[1].start) >= (bh + bw) // 2:
                break
            y, x = int(rng.integers(0, sh - ph + 1)), int(rng.integers(0, sw - pw + 1))
    patch = src[y:y + ph, x:x + pw].astype(np.float32)
    patch = ndimage.zoom(patch, (bh / ph, bw / pw, 1), order=1, grid_mode=True, mode="nearest")
    turns = int(rng.integers(0, 4))
    if bh == bw:
        patch = np.rot90(patch, turns)
    elif turns % 2:
        patch = patch[::-1]
    if rng.uniform() < 0.5:
        patch = patch[:, ::-1]
    return np.ascontiguousarray(patch[:bh, :bw]) * rng.uniform(0.8, 1.2)


def poisson_blend(target: np.ndarray, source: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Seamless cloning (Perez et al. 2003) of ``source`` into ``target`` on ``mask``.

    Solves, for each channel, the discrete Poisson equation ``lap f = lap source`` inside the
    mask with ``f = target`` on its border (a Neumann condition where the mask meets the array
    edge), with one sparse LU factorisation shared by the three channels.

    Args:
        target: (h, w, 3) float values outside the mask (and its border).
        source: (h, w, 3) float patch whose gradients are cloned.
        mask: (h, w) bool region to solve for.

    Returns:
        (h, w, 3) float32: ``target`` with the blended values inside the mask.
    """
    h, w = mask.shape
    idx = -np.ones((h, w), np.int64)
    ys, xs = np.nonzero(mask)
    n = ys.size
    idx[ys, xs] = np.arange(n)
    out = target.astype(np.float32).copy()
    if n == 0:
        return out
    src = source.astype(np.float64)
    tgt = target.astype(np.float64)
    rows, cols = [np.arange(n)], [np.arange(n)]
    diag = np.zeros(n)
    rhs = np.zeros((n, 3))
    for dy, dx in ((-1, 0), (1, 0), (0, -1), (0, 1)):
        qy, qx = ys + dy, xs + dx
        inside = (qy >= 0) & (qy < h) & (qx >= 0) & (qx < w)
        diag += inside
        p = np.flatnonzero(inside)
        qy, qx = qy[p], qx[p]
        rhs[p] += src[ys[p], xs[p]] - src[qy, qx]  # guidance: source gradients
        q = idx[qy, qx]
        unknown = q >= 0
        rows.append(p[unknown])
        cols.append(q[unknown])
        rhs[p[~unknown]] += tgt[qy[~unknown], qx[~unknown]]  # Dirichlet border values
    vals = [diag] + [-np.ones(r.size) for r in rows[1:]]
    a = sparse.csc_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                          shape=(n, n))
    sol = splu(a).solve(rhs)  # (n, 3)
    out[ys, xs] = sol.astype(np.float32)
    return out


GENERATORS: dict[str, Callable[..., SynthResult]] = {
    "scratch": scratch,
    "hole": hole,
    "stain": stain,
    "cut_paste": cut_paste,
    "color_shift": color_shift,
}


def synthesize(image: np.ndarray, rng: np.random.Generator, kinds: Sequence[str] | None = None,
               config: SynthConfig = DEFAULT_CONFIG, center: Center | None = None) -> SynthResult:
    """One defect of a kind drawn uniformly from ``kinds`` (default: all of ``DEFECT_KINDS``)."""
    kinds = tuple(DEFECT_KINDS if kinds is None else kinds)
    unknown = [k for k in kinds if k not in GENERATORS]
    if unknown or not kinds:
        raise ValueError(f"unknown defect kinds {unknown} (choose from {list(DEFECT_KINDS)})")
    kind = kinds[int(rng.integers(len(kinds)))]
    return GENERATORS[kind](image, rng, config=config, center=center)
