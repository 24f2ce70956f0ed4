"""The one configuration schema. Every model part is built only from its section here.

Unknown keys and bad values are rejected at load (``extra="forbid"``); the loader turns
pydantic's errors into messages that name the dotted key (``expert.coreset_ratio``).
"""

from __future__ import annotations

import enum
import os
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from configs.model_schema import ModelConfig
from configs.schema_base import Strict
from configs.serve_schema import ServeConfig
from configs.streams_schema import StreamsConfig
from configs.train_schema import TrainConfig

__all__ = ["Strict"]  # re-exported for the section modules


class BackboneKind(str, enum.Enum):
    """Feature extractor of the PatchCore expert."""

    tiny_cnn = "tiny_cnn"  # random-init 3-stage CNN, unit tests only
    tf_efficientnet_lite0 = "tf_efficientnet_lite0"  # packaged ImageNet weights (`small`)
    wide_resnet50_2 = "wide_resnet50_2"  # `paper`; weights from a local directory


class IndexKind(str, enum.Enum):
    """FAISS index holding the memory bank."""

    flat = "flat"  # exact L2
    ivf = "ivf"  # IndexIVFFlat (approximate, nprobe)
    hnsw = "hnsw"  # IndexHNSWFlat (approximate, ef_search)


class BackboneConfig(Strict):
    kind: BackboneKind
    # timm `out_indices` of the feature stages used (PatchCore: mid-level stages).
    layers: tuple[int, ...] = Field(min_length=1)
    # Tiny CNN width; ignored by pretrained backbones.
    tiny_width: int = Field(default=16, ge=4, le=256)

    @field_validator("layers")
    @classmethod
    def _sorted_unique(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if list(v) != sorted(set(v)) or min(v) < 0:
            raise ValueError("layers must be distinct, increasing, non-negative stage indices")
        return v


class IndexConfig(Strict):
    kind: IndexKind = IndexKind.flat
    ivf_nlist: int = Field(default=256, ge=1)
    ivf_nprobe: int = Field(default=8, ge=1)
    hnsw_m: int = Field(default=32, ge=4, le=256)
    hnsw_ef_search: int = Field(default=64, ge=1)
    hnsw_ef_construction: int = Field(default=80, ge=1)
    # "auto" uses a FAISS GPU index when faiss was built with CUDA and a GPU is visible.
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # How a flat index searches on the CPU. "bf16": a bfloat16 GEMM screens candidates and
    # float32 re-scoring decides (actors/modeling/screen.py): FAISS's results, ~2x faster.
    # "faiss": FAISS's float32 GEMM. "auto": bf16 where the CPU has it natively
    # (AVX512-BF16 / AMX), else FAISS.
    flat_search: Literal["auto", "bf16", "faiss"] = "auto"


class ExpertConfig(Strict):
    """PatchCore vision expert (DESIGN.md 2.1)."""

    backbone: BackboneConfig
    image_size: int = Field(default=224, ge=32, le=1024)
    # Local neighbourhood aggregation (PatchCore's 3x3 patch neighbourhood).
    neighbourhood: int = Field(default=3, ge=1, le=7)
    # The neighbourhood average counts the zero padding at the feature map's edge, as
    # PatchCore's reference implementation and anomalib do (torch AvgPool2d's default): edge
    # patches come out scaled down and match only edge patches of the bank. Averaging the
    # in-image cells alone left noisy edge patches that topped the normal images' scores
    # (small preset, image AUROC brick/grass/gravel 0.985/0.945/0.990 -> 1.000/0.973/1.000).
    neighbourhood_zero_padding: bool = True
    # Pixels of mirrored border added before the backbone (a multiple of the coarsest
    # stage's stride); border patches then see a plausible surround, not zero padding.
    border_padding: int = Field(default=0, ge=0, le=128)
    # Precision of the backbone's convolutions (the bank, search and maps stay float32).
    # bfloat16 runs the backbone ~2x faster on CPUs with AVX512-BF16/AMX and on GPUs, at
    # ~1% feature error, which moved brick's image AUROC by -0.014 in `myriad bench expert`;
    # on CPUs without BF16 it is slower. The presets keep float32.
    backbone_dtype: Literal["float32", "bfloat16"] = "float32"
    # Channel dimension each patch feature is pooled to (None keeps all channels).
    feature_dim: int | None = Field(default=None, ge=8)
    coreset_ratio: float = Field(default=0.1, gt=0.0, le=1.0)
    coreset_projection_dim: int = Field(default=128, ge=0)  # 0: no random projection
    num_neighbours: int = Field(default=1, ge=1, le=16)  # k for the patch score
    gaussian_sigma: float = Field(default=4.0, ge=0.0)
    shards: int = Field(default=1, ge=1, le=64)
    index: IndexConfig = IndexConfig()
    batch_size: int = Field(default=8, ge=1)
    # glibc: serve large tensors from the heap and keep freed pages for the next batch
    # (process-wide mallopt; ~1.5x predict on CPU, the process keeps its peak heap).
    # See actors/modeling/allocator.py.
    heap_allocations: bool = True
    # Normal scores the decision threshold is calibrated on:
    #   "cross_fit": the bank is fit on every normal image; the images are split into
    #                calibration_folds folds and each is scored against the bank without the
    #                rows its fold contributed (one score per image, none kept out of the bank);
    #   "held_out":  calibration_fraction of the images is kept out of the bank and scored.
    calibration: Literal["cross_fit", "held_out"] = "cross_fit"
    calibration_folds: int = Field(default=5, ge=2)
    calibration_fraction: float = Field(default=0.2, ge=0.0, lt=1.0)
    # Decision threshold from the calibration scores s_1..s_n:
    #   "max":        max(s)
    #   "normal_fit": max(max(s), mean(s) + z * std(s)), z the standard normal quantile of
    #                 1 - false_alarm_rate: the max of a few images under-estimates the tail
    #                 of the normal scores a line will see (n = 8 images ~ its 89th percentile).
    # then times threshold_margin.
    threshold_rule: Literal["max", "normal_fit"] = "normal_fit"
    false_alarm_rate: float = Field(default=0.001, gt=0.0, lt=0.5)
    threshold_margin: float = Field(default=1.0, gt=0.0)
    # Decompression-bomb guard: images above this many pixels are refused before decode.
    max_image_pixels: int = Field(default=64_000_000, ge=1024)
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"

    @model_validator(mode="after")
    def _odd_neighbourhood(self) -> "ExpertConfig":
        if self.neighbourhood % 2 == 0:
            raise ValueError("neighbourhood must be odd (it is centred on the patch)")
        if self.border_padding % 32:
            raise ValueError("border_padding must be a multiple of 32 (the coarsest stride)")
        return self


def default_home() -> Path:
    return Path(os.environ.get("MYRIAD_HOME", ".myriad")).expanduser()


class PathsConfig(Strict):
    """Where prepared weights, banks and models live (all outside the repo's tracked files)."""

    home: Path = Field(default_factory=default_home)

    @property
    def weights_dir(self) -> Path:
        return self.home / "weights"

    @field_validator("home")
    @classmethod
    def _absolute(cls, v: Path) -> Path:
        # Resolved once at load so Ray workers with another cwd see the same directory.
        return v.expanduser().resolve()


class MyriadClusterConfig(Strict):
    """Root of the configuration tree."""

    preset: str = Field(pattern=r"^[a-z0-9_\-]+$")
    paths: PathsConfig = PathsConfig()
    expert: ExpertConfig
    # The Myriad LMM (DESIGN.md 2); None where only the expert is configured.
    model: ModelConfig | None = None
    # Ray Train instruction tuning (DESIGN.md 6).
    train: TrainConfig | None = None
    # Ray Serve application: deployments, pools, autoscaling, HTTP (DESIGN.md 5).
    serve: ServeConfig | None = None
    # Kafka camera streams: lines, topics, consumers, archive (DESIGN.md 4).
    streams: StreamsConfig | None = None
