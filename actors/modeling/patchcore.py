"""PatchCore vision expert, plain torch + FAISS (DESIGN.md 2.1; Roth et al., CVPR 2022).

Pipeline for a batch of images x (B, 3, S, S):
  backbone stages -> 3x3 neighbourhood average per stage -> upsample to the finest stage ->
  concat channels -> (optional) adaptive pooling to ``feature_dim`` -> patches (B, h, w, D)
  -> nearest memory-bank rows (FAISS, possibly sharded) -> patch scores (B, h, w)
  -> upsample to (S, S) + Gaussian smoothing = anomaly map; image score = max patch score.

The framework wrappers live elsewhere: fitting in ``training.memory_bank``, Ray shards in
``actors.faiss_shard`` / ``actors.vision_expert``.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from actors.modeling.allocator import keep_freed_memory
from actors.modeling.backbones import build_backbone
from actors.modeling.knn import Searcher
from configs.schema import ExpertConfig

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# timm's tf_efficientnet_lite0 was trained on inputs scaled to [-1, 1].
NORMALISATION = {
    "tiny_cnn": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    "tf_efficientnet_lite0": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    "wide_resnet50_2": (IMAGENET_MEAN, IMAGENET_STD),
}


class ExpertOutput(NamedTuple):
    scores: np.ndarray  # (B,) image anomaly scores (max patch distance)
    anomaly_maps: np.ndarray  # (B, S, S) float32 smoothed patch distances
    patch_scores: np.ndarray  # (B, h, w)


@dataclass
class Timings:
    """Seconds spent per stage since the last reset (for the benchmark's search share)."""

    features: float = 0.0
    search: float = 0.0
    maps: float = 0.0
    images: int = 0
    per_stage: dict = field(default_factory=dict)

    def reset(self) -> None:
        self.features = self.search = self.maps = 0.0
        self.images = 0


def gaussian_kernel1d(sigma: float) -> torch.Tensor:
    radius = max(1, int(math.ceil(4.0 * sigma)))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def gaussian_blur(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (B, 1, H, W) with reflect padding (anomalib: sigma=4)."""
    if sigma <= 0:
        return maps
    k = gaussian_kernel1d(sigma).to(maps)
    r = (k.numel() - 1) // 2
    out = F.pad(maps, (r, r, 0, 0), mode="reflect")
    out = F.conv2d(out, k.view(1, 1, 1, -1))
    out = F.pad(out, (0, 0, r, r), mode="reflect")
    return F.conv2d(out, k.view(1, 1, -1, 1))


class PatchFeatures(nn.Module):
    """Locally aware patch features: (B, 3, S, S) -> (B, h, w, D). Frozen."""

    def __init__(self, cfg: ExpertConfig, weights_dir: Path | None) -> None:
        super().__init__()
        self.cfg = cfg
        if cfg.heap_allocations:
            keep_freed_memory()
        self.backbone = build_backbone(cfg.backbone, weights_dir, seed=cfg.seed)
        self.mean, self.std = NORMALISATION[cfg.backbone.kind.value]
        total = sum(self.backbone.channels)
        self.dim = cfg.feature_dim if cfg.feature_dim and cfg.feature_dim < total else total
        self.stride = self.backbone.strides[0]
        # NHWC convolutions take oneDNN's fast CPU path: the small backbone at 288 px, batch 8,
        # 2 cores: 0.16 s vs 0.26 s in NCHW, same numbers to float rounding.
        self.backbone.to(memory_format=torch.channels_last)
        self.requires_grad_(False)
        self.eval()

    def grid(self, image_size: int) -> tuple[int, int]:
        """Patch grid (h, w) for a square input, measured once with a dry run."""
        with torch.no_grad():
            x = torch.zeros(1, 3, image_size, image_size)
            h, w = self.backbone(x)[0].shape[-2:]
        return int(h), int(w)

    @torch.inference_mode()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pad = self.cfg.border_padding
        if pad:
            # Mirror the image outward so border patches see a plausible surround instead of
            # the CNN's zero padding, then cut the feature maps back to the image.
            x = F.pad(x, (pad, pad, pad, pad), mode="reflect")
        x = x.contiguous(memory_format=torch.channels_last)
        if self.cfg.backbone_dtype == "bfloat16":
            with torch.autocast(device_type=x.device.type, dtype=torch.bfloat16):
                feats = [f.float() for f in self.backbone(x)]
        else:
            feats = self.backbone(x)
        if pad:
            cut = []
            for f, stride in zip(feats, self.backbone.strides):
                c = pad // stride
                cut.append(f[..., c : f.shape[-2] - c, c : f.shape[-1] - c] if c else f)
            feats = cut
        k = self.cfg.neighbourhood
        size = feats[0].shape[-2:]
        pooled = []
        for f in feats:
            if k > 1:
                f = F.avg_pool2d(f, k, stride=1, padding=k // 2,
                                 count_include_pad=self.cfg.neighbourhood_zero_padding)
            if f.shape[-2:] != size:
                f = F.interpolate(f, size=size, mode="bilinear", align_corners=False)
            pooled.append(f)
        out = torch.cat(pooled, dim=1)  # (B, C, h, w)
        if self.dim < out.shape[1]:
            b, c, h, w = out.shape
            flat = out.permute(0, 2, 3, 1).reshape(-1, 1, c)
            return F.adaptive_avg_pool1d(flat, self.dim).reshape(b, h, w, self.dim)
        return out.permute(0, 2, 3, 1).contiguous()  # (B, h, w, D)


class PatchCore:
    """Scores images against a memory bank through any ``Searcher`` (one index or shards)."""

    def __init__(self, cfg: ExpertConfig, weights_dir: Path | None, searcher: Searcher | None = None):
        self.cfg = cfg
        self.features = PatchFeatures(cfg, weights_dir)
        self.searcher = searcher
        self.timings = Timings()

    @property
    def mean_std(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        return self.features.mean, self.features.std

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) -> (B, h, w, D) float32."""
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"expected images (B, 3, S, S), got {tuple(x.shape)}")
        if x.shape[0] == 0:
            raise ValueError("empty image batch")
        return self.features(x)

    def predict(self, x: torch.Tensor) -> ExpertOutput:
        """Anomaly scores and maps for a preprocessed batch (B, 3, S, S)."""
        if self.searcher is None:
            raise RuntimeError("PatchCore has no memory bank: fit or load one first")
        t0 = time.perf_counter()
        emb = self.embed(x)  # (B, h, w, D)
        b, h, w, d = emb.shape
        t1 = time.perf_counter()
        patch = self.patch_distances(emb, self.searcher)
        t2 = time.perf_counter()
        out = self.score_patches(patch, tuple(x.shape[-2:]))
        t3 = time.perf_counter()
        self.timings.features += t1 - t0
        self.timings.search += t2 - t1
        self.timings.maps += t3 - t2
        self.timings.images += b
        return out

    def patch_distances(self, emb: torch.Tensor, searcher: Searcher) -> torch.Tensor:
        """Patch features (B, h, w, D) -> distance to the nearest bank rows (B, h, w): the
        square root of the k nearest squared distances, averaged."""
        b, h, w, d = emb.shape
        neighbours = searcher.search(emb.reshape(-1, d).numpy(), self.cfg.num_neighbours)
        dist = np.sqrt(neighbours.distances).mean(axis=1)  # (B*h*w,)
        return torch.from_numpy(dist.astype(np.float32)).view(b, h, w)

    def score_patches(self, patch: torch.Tensor, size: tuple[int, int]) -> ExpertOutput:
        """Patch distances (B, h, w) -> image scores (max patch) and smoothed (B, H, W) maps."""
        patch = patch[:, None]
        maps = F.interpolate(patch, size=size, mode="bilinear", align_corners=False)
        maps = gaussian_blur(maps, self.cfg.gaussian_sigma)[:, 0]  # (B, S, S)
        scores = patch.flatten(1).amax(dim=1)
        return ExpertOutput(scores.numpy(), maps.numpy(), patch[:, 0].numpy())


def normalized_map(anomaly_map: np.ndarray, threshold: float, floor: float = 0.0) -> np.ndarray:
    """Map distances to [0, 1] for the LMM and overlays.

    ``floor`` (the bank's typical normal value) lands on 0 and ``threshold`` on 0.5, so a map
    reads the same way whatever the backbone's distance scale.
    """
    if not threshold > floor >= 0:
        raise ValueError(f"need threshold > floor >= 0, got threshold {threshold}, floor {floor}")
    return np.clip((anomaly_map - floor) / (2.0 * (threshold - floor)), 0.0, 1.0).astype(np.float32)


def lmm_map(anomaly_map: np.ndarray, threshold: float, normal_level: float) -> np.ndarray:
    """The map the LMM reads: background-centred, then ``normalized_map`` (threshold -> 0.5).

    The map's own median (its background) is moved to the bank's ``normal_level`` (the median
    map value of its calibration normals) before normalising. An image whose whole map runs
    warmer than the calibration images (lighting, focus or a surface region the bank never
    saw) then reads like a normal image with its local peaks intact, and a defect is read by
    how far it stands above its own background. On the texture benchmark the test normals'
    background sits at 0.77 of the threshold against 0.51-0.59 for the training normals,
    while peak minus median barely moves (closing note, issue 4).

    Args:
        anomaly_map: (H, W) PatchCore distances.
        threshold: the decision threshold (lands on 0.5).
        normal_level: the bank's typical normal value (``BankMeta.normal_level``), > 0.
    """
    if not threshold > normal_level > 0:
        raise ValueError(f"need threshold > normal_level > 0, got threshold {threshold}, "
                         f"normal_level {normal_level} (a bank fit before normal_level was recorded: refit it)")
    centred = anomaly_map - np.float32(np.median(anomaly_map) - normal_level)
    return normalized_map(centred, threshold)
