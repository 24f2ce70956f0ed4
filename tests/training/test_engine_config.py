"""The DeepSpeed config built from ``train:``: mixed precision must reach the engine's forward."""

from __future__ import annotations

import pytest

from configs import load_config
from training.param_groups import deepspeed_config


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_autocast_precision_is_declared_to_deepspeed(dtype):
    # DeepSpeed's engine switches off a CUDA torch.autocast entered outside it unless its own
    # `torch_autocast` section is on (measured on an H200: the forward ran in fp32, 2x slower).
    t = load_config("tiny", [f"train.dtype={dtype}", "train.precision=autocast"]).train
    ds = deepspeed_config(t, 2)
    assert ds["torch_autocast"] == {"enabled": True, "dtype": dtype, "lower_precision_safe_modules": []}
    assert "bf16" not in ds and "fp16" not in ds  # fp32 master weights, not DeepSpeed's casting


def test_deepspeed_precision_uses_its_own_section():
    t = load_config("tiny", ["train.dtype=bf16", "train.precision=deepspeed"]).train
    ds = deepspeed_config(t, 1)
    assert ds["bf16"] == {"enabled": True} and "torch_autocast" not in ds


def test_fp32_has_no_mixed_precision():
    ds = deepspeed_config(load_config("tiny", ["train.dtype=fp32"]).train, 1)
    assert "torch_autocast" not in ds and "bf16" not in ds and "fp16" not in ds
