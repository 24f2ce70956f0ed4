"""The LLM (Myriad, DESIGN.md 2.6): transformers' ``LlamaForCausalLM`` + optional LoRA.

Built only from ``LLMConfig``; pretrained weights (SmolLM2 prepared as safetensors, or a
local Vicuna / LLaMA-2 directory) load strictly after the checkpoint's config is checked
against the declared architecture. LoRA (``LoRALinear``) wraps the configured attention
projections; its ``B`` starts at zero so the wrapped LLM computes exactly the base LLM.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

from actors.modeling import hf_dirs
from configs.model_schema import LLMConfig, LoRAConfig, WeightsSource


def llama_config(cfg: LLMConfig):
    from transformers import LlamaConfig

    lc = LlamaConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads, num_key_value_heads=cfg.num_kv_heads,
        intermediate_size=cfg.intermediate_size,
        max_position_embeddings=cfg.max_position_embeddings,
        rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_theta},
        rms_norm_eps=cfg.rms_norm_eps, tie_word_embeddings=cfg.tie_word_embeddings,
        bos_token_id=1, eos_token_id=2, pad_token_id=2 if cfg.vocab_size > 2 else 0,
    )
    lc._attn_implementation = "sdpa"
    return lc


def build_llm(cfg: LLMConfig):
    """A ``LlamaForCausalLM`` with the declared architecture (random init)."""
    from transformers import LlamaForCausalLM

    return LlamaForCausalLM(llama_config(cfg))


def _rope_theta(found: dict) -> float | None:
    params = found.get("rope_parameters") or found.get("rope_scaling") or {}
    return params.get("rope_theta", found.get("rope_theta"))


def load_llm_weights(llm: nn.Module, cfg: LLMConfig, weights_dir: Path | None) -> Path | None:
    """Load pretrained weights into ``llm`` (strict). Returns the directory used, if any."""
    ref = cfg.weights
    if ref.source == WeightsSource.random:
        return None
    directory = hf_dirs.resolve_weights_dir(ref, weights_dir)
    found = hf_dirs.read_hf_config(directory)
    found = {**found, "rope_theta": _rope_theta(found)}
    declared = {
        "vocab_size": cfg.vocab_size, "hidden_size": cfg.hidden_size,
        "num_hidden_layers": cfg.num_layers, "num_attention_heads": cfg.num_heads,
        "num_key_value_heads": cfg.num_kv_heads, "intermediate_size": cfg.intermediate_size,
        "tie_word_embeddings": cfg.tie_word_embeddings, "rope_theta": cfg.rope_theta,
        "rms_norm_eps": cfg.rms_norm_eps,
    }
    hf_dirs.check_declared("llm", directory, declared, found)
    state = hf_dirs.read_state_dict(directory, ref.prefix)
    if cfg.tie_word_embeddings:
        state.setdefault("lm_head.weight", state["model.embed_tokens.weight"])
    hf_dirs.load_strict(llm, state, f"llm ({directory})")
    if cfg.tie_word_embeddings:
        llm.tie_weights()
    return directory


class LoRALinear(nn.Module):
    """``base(x) + (alpha / r) * B(A(x))`` with the base frozen elsewhere; B starts at zero."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float) -> None:
        super().__init__()
        self.base = base
        self.lora_a = nn.Linear(base.in_features, rank, bias=False)
        self.lora_b = nn.Linear(rank, base.out_features, bias=False)
        nn.init.kaiming_uniform_(self.lora_a.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_b.weight)
        self.scale = alpha / rank

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.lora_b(self.lora_a(x)) * self.scale


def add_lora(llm: nn.Module, cfg: LoRAConfig) -> list[LoRALinear]:
    """Wrap each decoder layer's configured attention projections with LoRA."""
    wrapped = []
    for layer in llm.model.layers:
        attn = layer.self_attn
        for target in cfg.targets:
            lora = LoRALinear(getattr(attn, target.value), cfg.rank, cfg.alpha)
            setattr(attn, target.value, lora)
            wrapped.append(lora)
    return wrapped
