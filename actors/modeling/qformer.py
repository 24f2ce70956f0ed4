"""Q-Former (Myriad, DESIGN.md 2.4): a BERT-style query transformer over the ViT tokens.

Composed from transformers' BERT blocks in the BLIP-2 / LAVIS layout: per layer
bidirectional self-attention among the queries (``BertAttention``), cross-attention to the
adapted image tokens F' every ``cross_attention_every`` layers (``BertAttention`` with
``is_cross_attention``; its key/value take the ViT width), then the feed-forward
(``BertIntermediate`` + ``BertOutput``). Queries = ``num_queries`` learned tokens joined with
the VPG's 49 expert tokens. Parameter names follow BERT (``layer.{i}.attention.self.query``),
so a BERT checkpoint (MiniLM-L6 for `small`) initialises the self-attention and FFN weights;
cross-attention starts random, as in BLIP-2.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import nn

from actors.modeling import hf_dirs
from configs.model_schema import QFormerConfig, QFormerLayout, WeightsSource

# transformers BLIP-2 Q-Former names -> ours (BERT names; the query FFN is the only FFN).
_BLIP2_NAMES = {
    ".attention.attention.": ".attention.self.",
    ".crossattention.attention.": ".crossattention.self.",
    ".intermediate_query.": ".intermediate.",
    ".output_query.": ".output.",
    "layernorm.": "input_norm.",
}
_BLIP2_RENAME = re.compile("|".join(re.escape(k) for k in _BLIP2_NAMES))
_BLIP2_TEXT_FFN = re.compile(r"^encoder\.layer\.\d+\.(intermediate|output)\.")


def bert_config(cfg: QFormerConfig):
    from transformers import BertConfig

    bc = BertConfig(
        hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads, intermediate_size=cfg.intermediate_size,
        layer_norm_eps=cfg.layer_norm_eps, hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0, hidden_act="gelu",
    )
    bc._attn_implementation = "sdpa"
    return bc


class QFormerLayer(nn.Module):
    def __init__(self, bc, encoder_width: int, cross_attention: bool) -> None:
        super().__init__()
        from transformers.models.bert.modeling_bert import BertAttention, BertIntermediate, BertOutput

        self.attention = BertAttention(bc, is_causal=False)
        self.crossattention = None
        if cross_attention:
            self.crossattention = BertAttention(bc, is_causal=False, is_cross_attention=True)
            heads = self.crossattention.self  # key/value read the ViT tokens (B, N, D_vit)
            heads.key = nn.Linear(encoder_width, heads.all_head_size)
            heads.value = nn.Linear(encoder_width, heads.all_head_size)
        self.intermediate = BertIntermediate(bc)
        self.output = BertOutput(bc)

    def forward(self, queries: torch.Tensor, image_tokens: torch.Tensor) -> torch.Tensor:
        """(B, Q, H) queries, (B, N, D_vit) image tokens -> (B, Q, H)."""
        h = self.attention(queries)[0]
        if self.crossattention is not None:
            h = self.crossattention(h, encoder_hidden_states=image_tokens)[0]
        return self.output(self.intermediate(h), h)


class QFormer(nn.Module):
    """Learned + expert queries attend to F'; output (B, num_queries + 49, H)."""

    def __init__(self, config: QFormerConfig, encoder_width: int) -> None:
        super().__init__()
        self.config = config
        bc = bert_config(config)
        self.query_tokens = nn.Parameter(torch.randn(1, config.num_queries, config.hidden_size) * 0.02)
        self.input_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.layer = nn.ModuleList(
            QFormerLayer(bc, encoder_width, i % config.cross_attention_every == 0)
            for i in range(config.num_layers)
        )

    def forward(self, image_tokens: torch.Tensor, expert_queries: torch.Tensor) -> torch.Tensor:
        """(B, N, D_vit) F', (B, 49, H) VPG tokens -> (B, num_queries + 49, H)."""
        b = image_tokens.shape[0]
        q = torch.cat([self.query_tokens.expand(b, -1, -1), expert_queries], dim=1)
        q = self.input_norm(q)
        for layer in self.layer:
            q = layer(q, image_tokens)
        return q

    def load_pretrained(self, weights_dir: Path | None) -> None:
        """Load from the configured checkpoint (``layout``: BERT init or a BLIP-2 Q-Former)."""
        ref = self.config.weights
        if ref.source == WeightsSource.random:
            return
        directory = hf_dirs.resolve_weights_dir(ref, weights_dir)
        found = hf_dirs.read_hf_config(directory)
        if self.config.layout == QFormerLayout.blip2:
            self._load_blip2(directory, found.get("qformer_config", found))
        else:
            self._load_bert(directory, found)

    def _load_blip2(self, directory: Path, found: dict) -> None:
        """Every weight from a transformers BLIP-2 directory (``qformer.*`` + ``query_tokens``)."""
        c = self.config
        declared = {"hidden_size": c.hidden_size, "num_attention_heads": c.num_heads,
                    "intermediate_size": c.intermediate_size, "num_hidden_layers": c.num_layers,
                    "cross_attention_frequency": c.cross_attention_every}
        hf_dirs.check_declared("qformer", directory, declared, found)
        src = hf_dirs.read_state_dict(directory, self.config.weights.prefix)
        state = {}
        for key, tensor in src.items():
            if key != "query_tokens" and not key.startswith("qformer."):
                continue  # vision_model.*, language_model.*, language_projection.*
            key = key.removeprefix("qformer.")
            if _BLIP2_TEXT_FFN.match(key):
                continue  # the text-input FFN: no text enters this Q-Former
            renamed = _BLIP2_RENAME.sub(lambda m: _BLIP2_NAMES[m.group(0)], key)
            state[renamed.removeprefix("encoder.")] = tensor
        hf_dirs.load_strict(self, state, f"qformer ({directory})")

    def _load_bert(self, directory: Path, found: dict) -> None:
        """Initialise self-attention + FFN (+ input LayerNorm) from a BERT encoder."""
        ref, c = self.config.weights, self.config
        declared = {"hidden_size": c.hidden_size, "num_attention_heads": c.num_heads,
                    "intermediate_size": c.intermediate_size}
        hf_dirs.check_declared("qformer", directory, declared, found)
        if found.get("num_hidden_layers", 0) < c.num_layers:
            raise hf_dirs.WeightsError(
                f"qformer: {directory} has {found.get('num_hidden_layers')} layers, config wants {c.num_layers}"
            )
        src = hf_dirs.read_state_dict(directory, ref.prefix)
        state = dict(self.state_dict())  # start from own tensors: cross-attention, queries
        taken = 0
        for key in list(state):
            if key.startswith("layer.") and ".crossattention." not in key:
                bert_key = "encoder." + key
                if bert_key not in src:
                    raise hf_dirs.WeightsError(f"qformer: {bert_key} missing in {directory}")
                state[key] = src[bert_key]
                taken += 1
        for ours, theirs in (("input_norm.weight", "embeddings.LayerNorm.weight"),
                             ("input_norm.bias", "embeddings.LayerNorm.bias")):
            state[ours] = src[theirs]
        hf_dirs.load_strict(self, state, f"qformer ({directory})")
