"""VE-guided vision encoder (Myriad, DESIGN.md 2.2): [x; m] -> pretrained ViT tokens.

The image ``x`` (B, 3, S, S) and the expert map ``m`` (B, 1, S, S) enter as 4 channels. The
patch embedding is the pretrained 3-channel conv plus a 4th-channel conv ``map_embed``
(same kernel and stride, no bias), initialised to zero. A conv is linear in its input
channels, so this *is* a 4-channel patch embedding whose map channel is a separate
parameter (it trains while the pretrained 3 channels stay frozen); at step 0 the encoder
returns exactly the pretrained ViT's output. The map term is added to the patch tokens
after the upstream embedding module (cls token + position embeddings), which is the same sum.

Composes transformers' ViTs, selected by ``VisionKind``:
- ``dinov2``: ``Dinov2Model`` (tiny: random; small: DINOv2 ViT-S/14 prepared from ONNX);
- ``eva_clip``: ``Blip2VisionModel``, the EVA-CLIP ViT-g/14 of BLIP-2 (paper).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from actors.modeling import hf_dirs
from actors.modeling.weights_lmm import dinov2_current_name
from configs.model_schema import VisionConfig, VisionKind, WeightsSource


def _dinov2(cfg: VisionConfig):
    from transformers import Dinov2Config, Dinov2Model

    if cfg.intermediate_size % cfg.hidden_size:
        raise ValueError("dinov2: intermediate_size must be an integer multiple of hidden_size")
    return Dinov2Model(Dinov2Config(
        hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads, mlp_ratio=cfg.intermediate_size // cfg.hidden_size,
        image_size=cfg.pos_embed_image_size, patch_size=cfg.patch_size,
        layer_norm_eps=cfg.layer_norm_eps, layerscale_value=1.0,
    ))


def _eva_clip(cfg: VisionConfig):
    from transformers import Blip2VisionConfig, Blip2VisionModel

    return Blip2VisionModel(Blip2VisionConfig(
        hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads, intermediate_size=cfg.intermediate_size,
        image_size=cfg.pos_embed_image_size, patch_size=cfg.patch_size,
        layer_norm_eps=cfg.layer_norm_eps, qkv_bias=True,
    ))


_BUILDERS = {VisionKind.dinov2: _dinov2, VisionKind.eva_clip: _eva_clip}


class VEGuidedViT(nn.Module):
    """Pretrained ViT with a zero-initialised anomaly-map input channel.

    Example::

        enc = VEGuidedViT(cfg.vision)
        tokens = enc(pixel_values, maps)  # (B, 1 + (S/P)**2, D)
    """

    def __init__(self, config: VisionConfig) -> None:
        super().__init__()
        self.config = config
        self.vit = _BUILDERS[config.kind](config)
        p = config.patch_size
        self.map_embed = nn.Conv2d(1, config.hidden_size, kernel_size=p, stride=p, bias=False)
        nn.init.zeros_(self.map_embed.weight)
        self.num_tokens = 1 + (config.image_size // p) ** 2

    @property
    def hidden_size(self) -> int:
        return self.config.hidden_size

    def pretrained_forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The upstream ViT alone on (B, 3, S, S): its last_hidden_state (B, 1 + N, D)."""
        if self.config.kind == VisionKind.dinov2:
            return self.vit(pixel_values).last_hidden_state
        return self.vit(pixel_values, interpolate_pos_encoding=True).last_hidden_state

    def forward(self, pixel_values: torch.Tensor, maps: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) image, (B, 1, S, S) map -> (B, 1 + N, D) tokens F."""
        if self.config.kind == VisionKind.dinov2:
            emb = self.vit.embeddings(pixel_values)  # (B, 1 + N, D): cls + pos
        else:
            emb = self.vit.embeddings(pixel_values, interpolate_pos_encoding=True)
        map_tokens = self.map_embed(maps.to(emb.dtype)).flatten(2).transpose(1, 2)  # (B, N, D)
        emb = torch.cat([emb[:, :1], emb[:, 1:] + map_tokens], dim=1)
        if self.config.kind == VisionKind.dinov2:
            hidden = self.vit.encoder(emb).last_hidden_state
            return self.vit.layernorm(hidden)
        hidden = self.vit.encoder(inputs_embeds=emb).last_hidden_state
        return self.vit.post_layernorm(hidden)

    def load_pretrained(self, weights_dir: Path | None) -> None:
        """Load the ViT body from the configured weights (strict; config checked first)."""
        ref = self.config.weights
        if ref.source == WeightsSource.random:
            return
        directory = hf_dirs.resolve_weights_dir(ref, weights_dir)
        found = hf_dirs.read_hf_config(directory)
        found = found.get("vision_config", found)  # BLIP-2 directories nest it
        c = self.config
        declared = {"hidden_size": c.hidden_size, "num_hidden_layers": c.num_layers,
                    "num_attention_heads": c.num_heads, "patch_size": c.patch_size,
                    "image_size": c.pos_embed_image_size}
        hf_dirs.check_declared("vision", directory, declared, found)
        state = hf_dirs.read_state_dict(directory, ref.prefix)
        if self.config.kind == VisionKind.dinov2:
            # transformers writes Dinov2 files with the legacy attention names.
            state = {dinov2_current_name(k): v for k, v in state.items()}
        hf_dirs.load_strict(self.vit, state, f"vision ({directory})")
