"""Configuration of Ray Train instruction tuning (DESIGN.md 6; issue 4).

One section, ``train:``, beside the model it trains. The data pipeline (``data``), the
workers (``scaling``), the optimizer (``optimizer``) and DeepSpeed (``zero_stage``,
``dtype``) are all read from here; nothing in ``training/`` has its own defaults.

Where things land (``paths.home`` is ``.myriad`` unless ``MYRIAD_HOME`` says otherwise)::

    <home>/train/<run_name>/            Ray Train run: checkpoint_<step>/ (every rank's shard)
    <home>/train/banks/<category>/...   cross-fitted expert banks used to draw training maps
    <home>/models/<preset>/             the exported model directory (``myriad ask --model``)
"""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from configs.schema_base import Strict


class DType(str, enum.Enum):
    fp32 = "fp32"
    bf16 = "bf16"
    fp16 = "fp16"


class Precision(str, enum.Enum):
    """How a non-fp32 ``dtype`` is applied."""

    # fp32 master weights, forward under torch.autocast(dtype): the same on CPU and GPU.
    autocast = "autocast"
    # DeepSpeed's own bf16/fp16 engine (weights cast to dtype, fp32 master copy in ZeRO).
    deepspeed = "deepspeed"


class OptimizerKind(str, enum.Enum):
    adamw = "adamw"  # torch.optim.AdamW (no JIT build on CPU; fused on GPU)
    adam = "adam"
    sgd = "sgd"


class Strategy(str, enum.Enum):
    deepspeed = "deepspeed"  # deepspeed.initialize with ZeRO `zero_stage` (0: plain data parallel)
    ddp = "ddp"  # torch DistributedDataParallel: the reference the ZeRO runs are checked against


class Backend(str, enum.Enum):
    auto = "auto"  # gloo on CPU, nccl on GPU (deepspeed.accelerator decides)
    gloo = "gloo"
    nccl = "nccl"


class ScalingSection(Strict):
    """Ray Train workers (``ScalingConfig``). Mind PLATFORM.md's 2-CPU deadlock: a worker
    that takes a whole CPU leaves none to Ray Data; keep ``cpus_per_worker`` fractional on
    small nodes (or start Ray with more logical CPUs)."""

    num_workers: int = Field(default=2, ge=1, le=1024)
    use_gpu: bool = False
    cpus_per_worker: float = Field(default=0.5, gt=0)
    gpus_per_worker: float = Field(default=1.0, gt=0)
    # Custom Ray resources per worker, e.g. {pool_train: 1} to pin training to a node pool.
    resources_per_worker: dict[str, float] = Field(default_factory=dict)
    # torch/OMP threads per worker (PLATFORM.md: 1 per rank on 2 cores).
    threads_per_worker: int = Field(default=1, ge=1, le=256)
    # Logical CPUs of the local Ray started by `myriad train` when no cluster is running.
    local_num_cpus: int = Field(default=4, ge=1)
    # Niceness of the local Ray's workers (Ray's own default is 15, which starves training
    # beside any plain process on a shared node). Clusters from `ray start` keep theirs.
    local_worker_niceness: int = Field(default=0, ge=0, le=19)


class DataSection(Strict):
    """Ray Data instruction samples: normal image -> (synthetic defect) -> expert map -> text."""

    # MVTec-layout root(s) whose <category>/train/good images are the normal sources.
    root: Path | None = None  # default: <home>/data/textures (`myriad data textures`)
    categories: tuple[str, ...] = Field(default=("brick", "grass", "gravel"), min_length=1)
    # Parquet manifests (columns: path, category) used instead of / beside `root`.
    manifests: tuple[Path, ...] = ()
    anomaly_ratio: float = Field(default=0.5, ge=0.0, le=1.0)  # balanced by default
    kinds: tuple[str, ...] = ("scratch", "hole", "stain", "cut_paste", "color_shift")
    # cut_paste takes its patch from another category's normal image (foreign material).
    foreign_paste: bool = True
    scratch_radius: tuple[int, int] = (1, 3)
    # Scratch looks, drawn per scratch (training.anomaly_synthesis.SynthConfig.scratch_style):
    # "additive" lightens/darkens the surface and keeps its grain (a scuff; on grass or gravel
    # it can read as one more blade or pebble edge), "groove" is a gouge of one flat tone.
    scratch_styles: tuple[Literal["additive", "groove"], ...] = Field(default=("additive",), min_length=1)
    area_range: tuple[float, float] = (0.005, 0.06)
    flip: bool = True  # random horizontal / vertical flips of the normal image
    # Training maps come from banks fit WITHOUT the image (k-fold), so they look like the
    # maps of unseen test images; 1 uses one bank on all images (maps of bank images ~ 0).
    # More folds -> banks nearer the deployed one (all images): with 2, half-size banks drew
    # normal maps ~0.03 warmer than the full bank draws on unseen normals (closing note #4).
    expert_folds: int = Field(default=8, ge=1, le=10)
    # Calibration jitter: a `map_gain_ratio` share of the samples get their normalized map
    # multiplied by a gain drawn log-uniformly from `map_gain` (then clipped to [0, 1]).
    # Unseen normals often run warmer than the banks' own calibration images (a new lot, new
    # light, a texture's other half); the LMM then sees warm normal maps in training too and
    # must read the image, not the map's level alone. (1, 1): off.
    # "normal": only normal samples are jittered (a defect's map is left as drawn, so the
    # positions the LMM reads from it keep their extent).
    map_gain: tuple[float, float] = (1.0, 1.0)
    map_gain_ratio: float = Field(default=0.0, ge=0.0, le=1.0)
    map_gain_samples: Literal["all", "normal"] = "all"
    banks_dir: Path | None = None  # default: <home>/train/banks
    expert_batch_size: int = Field(default=8, ge=1)
    expert_cpus: float = Field(default=0.25, gt=0)  # per expert actor in map_batches
    expert_concurrency: int = Field(default=1, ge=1)
    synth_cpus: float = Field(default=0.25, gt=0)
    eval_samples: int = Field(default=32, ge=0)  # synthetic held-out set for periodic eval
    # Before step 0, fit the TPG gate's starting values (model.tpg.gate_threshold,
    # share_threshold, share_base) to `fit_gate_samples` synthetic samples of their own
    # (training.gate_fit): the triple whose hard cell rule best reproduces the masks' grid
    # positions (none on normals).
    fit_gate: bool = False
    fit_gate_samples: int = Field(default=256, ge=8)
    seed: int = 0

    @model_validator(mode="after")
    def _ranges(self) -> "DataSection":
        a0, a1 = self.area_range
        if not 0 < a0 <= a1 < 1:
            raise ValueError("area_range must satisfy 0 < lo <= hi < 1")
        if not 0 <= self.scratch_radius[0] <= self.scratch_radius[1]:
            raise ValueError("scratch_radius must satisfy 0 <= lo <= hi")
        if not 0 < self.map_gain[0] <= self.map_gain[1]:
            raise ValueError("map_gain must satisfy 0 < lo <= hi")
        return self


class OptimizerSection(Strict):
    kind: OptimizerKind = OptimizerKind.adamw
    lr: float = Field(default=1e-3, gt=0)
    weight_decay: float = Field(default=0.0, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = Field(default=20, ge=0)
    min_lr_ratio: float = Field(default=0.1, ge=0, le=1)  # cosine decay floor (x lr)
    grad_clip: float = Field(default=1.0, ge=0)  # 0: off
    # Per trainable group (see myriad.trainable_groups) learning-rate multipliers.
    lr_scale: dict[str, float] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _groups(self) -> "OptimizerSection":
        known = {"adapter", "vpg", "tpg", "map_channel", "projection", "qformer", "llm_lora"}
        bad = sorted(set(self.lr_scale) - known)
        if bad:
            raise ValueError(f"lr_scale: unknown groups {bad} (known: {sorted(known)})")
        return self


class TrainConfig(Strict):
    """Instruction tuning of the Myriad LMM with Ray Train + Ray Data + DeepSpeed."""

    data: DataSection = DataSection()
    scaling: ScalingSection = ScalingSection()
    optimizer: OptimizerSection = OptimizerSection()
    strategy: Strategy = Strategy.deepspeed
    zero_stage: int = Field(default=2, ge=0, le=3)
    dtype: DType = DType.fp32
    precision: Precision = Precision.autocast
    backend: Backend = Backend.auto
    micro_batch_size: int = Field(default=4, ge=1)  # per worker
    grad_accum: int = Field(default=1, ge=1)
    max_steps: int = Field(default=100, ge=1)  # optimizer steps
    # Wall-clock budget for the training loop (minutes); training stops after the step
    # that crosses it, then checkpoints and exports. None: only max_steps.
    max_minutes: float | None = Field(default=None, gt=0)
    log_every: int = Field(default=10, ge=1)
    eval_every: int = Field(default=50, ge=1)
    checkpoint_every: int = Field(default=50, ge=1)
    keep_checkpoints: int = Field(default=2, ge=1)
    run_name: str = Field(default="myriad", pattern=r"^[A-Za-z0-9_.\-]+$")
    storage_dir: Path | None = None  # default: <home>/train
    export_dir: Path | None = None  # default: <home>/models/<preset>
    max_failures: int = Field(default=1, ge=-1)  # worker-group restarts from the checkpoint
    seed: int = 0

    @property
    def global_batch(self) -> int:
        return self.micro_batch_size * self.grad_accum * self.scaling.num_workers


def storage_dir(cfg) -> Path:
    """Ray Train storage of a root config (absolute: Ray workers have another cwd)."""
    t = cfg.train
    return Path(t.storage_dir).expanduser().resolve() if t.storage_dir else cfg.paths.home / "train"


def default_model_dir(cfg) -> Path:
    """Where training exports the model and what ``myriad ask --model`` / serving load."""
    t = cfg.train
    if t is not None and t.export_dir is not None:
        return Path(t.export_dir).expanduser().resolve()
    return cfg.paths.home / "models" / cfg.preset


def data_root(cfg) -> Path:
    t = cfg.train
    return Path(t.data.root).expanduser().resolve() if t.data.root else cfg.paths.home / "data" / "textures"


def banks_dir(cfg) -> Path:
    d = cfg.train.data.banks_dir
    return Path(d).expanduser().resolve() if d else storage_dir(cfg) / "banks"
