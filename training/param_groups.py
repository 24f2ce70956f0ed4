"""Optimizer parameter groups and the DeepSpeed config, both from ``train:`` only.

Groups are ``myriad.trainable_groups`` (what trains is decided there and asserted); each
group's learning rate is ``optimizer.lr * optimizer.lr_scale[group]`` (default x1). The
schedule is linear warm-up then cosine decay to ``min_lr_ratio``, applied per step by
``set_lr`` so that DeepSpeed's ZeRO wrappers and plain torch optimizers behave the same.
"""

from __future__ import annotations

import contextlib
import math

import torch

from actors.modeling.myriad import MyriadModel, assert_trainable, trainable_groups
from configs.train_schema import DType, OptimizerKind, Precision, TrainConfig


def param_groups(model: MyriadModel, train: TrainConfig) -> list[dict]:
    assert_trainable(model, model.config.trainable)
    opt = train.optimizer
    groups = []
    for name, params in trainable_groups(model).items():
        params = [p for p in params if p.requires_grad]
        if params:
            lr = opt.lr * opt.lr_scale.get(name, 1.0)
            groups.append({"params": params, "name": name, "lr": lr, "base_lr": lr,
                           "weight_decay": opt.weight_decay})
    if not groups:
        raise ValueError("nothing to train: every trainable group of model.trainable is off")
    return groups


def build_optimizer(model: MyriadModel, train: TrainConfig) -> torch.optim.Optimizer:
    opt = train.optimizer
    groups = param_groups(model, train)
    if opt.kind == OptimizerKind.adamw:
        return torch.optim.AdamW(groups, lr=opt.lr, betas=opt.betas, weight_decay=opt.weight_decay)
    if opt.kind == OptimizerKind.adam:
        return torch.optim.Adam(groups, lr=opt.lr, betas=opt.betas)
    return torch.optim.SGD(groups, lr=opt.lr, momentum=opt.betas[0])


def lr_factor(step: int, train: TrainConfig) -> float:
    """Multiplier of the base learning rate before optimizer step ``step`` (0-based)."""
    opt = train.optimizer
    if step < opt.warmup_steps:
        return (step + 1) / opt.warmup_steps
    span = max(1, train.max_steps - opt.warmup_steps)
    progress = min(1.0, (step - opt.warmup_steps) / span)
    return opt.min_lr_ratio + (1 - opt.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def set_lr(optimizer, step: int, train: TrainConfig) -> float:
    f = lr_factor(step, train)
    for g in optimizer.param_groups:
        g["lr"] = g.get("base_lr", train.optimizer.lr) * f
    return train.optimizer.lr * f


def deepspeed_config(train: TrainConfig, world_size: int) -> dict:
    """The DeepSpeed JSON config for ``world_size`` data-parallel ranks."""
    cfg: dict = {
        "train_micro_batch_size_per_gpu": train.micro_batch_size,
        "gradient_accumulation_steps": train.grad_accum,
        "train_batch_size": train.micro_batch_size * train.grad_accum * world_size,
        "zero_optimization": {"stage": train.zero_stage},
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
        "checkpoint": {"use_node_local_storage": True},
    }
    if train.optimizer.grad_clip > 0:
        cfg["gradient_clipping"] = train.optimizer.grad_clip
    if train.zero_stage == 3:
        cfg["zero_optimization"].update({"stage3_param_persistence_threshold": 0,
                                         "stage3_gather_16bit_weights_on_model_save": False})
    if train.precision == Precision.deepspeed and train.dtype != DType.fp32:
        cfg[train.dtype.value] = {"enabled": True}
    elif train.precision == Precision.autocast and train.dtype != DType.fp32:
        # DeepSpeed switches off a torch.autocast entered outside its engine (its forward runs
        # under its own `torch_autocast` setting), so the autocast dtype must be declared here
        # or the forward silently runs in fp32. No module's gradients are reduced in the lower
        # precision (an empty safe-module list): fp32 all-reduce, as under DDP.
        cfg["torch_autocast"] = {"enabled": True, "dtype": train.dtype.value,
                                 "lower_precision_safe_modules": []}
    return cfg


def autocast_dtype(train: TrainConfig) -> torch.dtype | None:
    """The torch.autocast dtype, or None when the forward runs in the weights' dtype."""
    if train.precision != Precision.autocast or train.dtype == DType.fp32:
        return None
    return torch.bfloat16 if train.dtype == DType.bf16 else torch.float16


def autocast_context(train: TrainConfig, device_type: str):
    """The forward's mixed-precision context on ``device_type`` ("cpu"/"cuda"): torch.autocast
    at ``autocast_dtype(train)``, or a no-op when there is none."""
    dtype = autocast_dtype(train)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type, dtype=dtype)
