"""Config of the Myriad LMM (DESIGN.md 2): one schema, three presets (tiny, small, paper).

The architecture is always declared here, also for pretrained parts: weights are loaded
*into* the declared shapes (strictly), and a checkpoint whose own config disagrees is
refused with the differing keys named. That lets `paper` be built on the meta device
without its weights.
"""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from configs.schema_base import Strict


class VisionKind(str, enum.Enum):
    """Which transformers ViT class the VE-guided encoder composes."""

    dinov2 = "dinov2"  # transformers Dinov2Model (tiny: random; small: DINOv2 ViT-S/14)
    eva_clip = "eva_clip"  # transformers Blip2VisionModel = EVA-CLIP ViT-g/14 (paper)


class WeightsSource(str, enum.Enum):
    """Where a pretrained part's weights come from."""

    random = "random"  # random init (tiny preset, unit tests)
    prepared = "prepared"  # `myriad weights prepare` output: <paths.weights_dir>/<name>
    local_dir = "local_dir"  # a Hugging Face directory a user points at (paper)


class TokenizerKind(str, enum.Enum):
    ascii = "ascii"  # the offline ASCII tokenizer (tiny, vocab 128)
    pretrained = "pretrained"  # the tokenizer saved beside the LLM weights


class ChatFormat(str, enum.Enum):
    """How the instruction is wrapped for the LLM (the wording itself is versioned in prompt.py)."""

    chatml = "chatml"  # <|im_start|>user ... <|im_end|> (SmolLM2, tiny)
    vicuna = "vicuna"  # USER: ... ASSISTANT: (Vicuna / LLaMA-2 chat, paper)


class QFormerLayout(str, enum.Enum):
    """Key layout of a Q-Former checkpoint."""

    bert = "bert"  # a BERT encoder (MiniLM-L6): self-attention + FFN, cross-attention random
    blip2 = "blip2"  # a transformers BLIP-2 directory: every weight, queries included


class LoRATarget(str, enum.Enum):
    """LLaMA attention projections LoRA may wrap (attribute names of LlamaAttention)."""

    q_proj = "q_proj"
    k_proj = "k_proj"
    v_proj = "v_proj"
    o_proj = "o_proj"


class WeightsRef(Strict):
    source: WeightsSource = WeightsSource.random
    name: str | None = None  # prepared weights name, e.g. "dinov2_vits14"
    path: Path | None = None  # local Hugging Face directory
    # For local_dir checkpoints holding several models (BLIP-2): the key prefix to take.
    prefix: str = ""

    @model_validator(mode="after")
    def _consistent(self) -> "WeightsRef":
        if self.source == WeightsSource.prepared and not self.name:
            raise ValueError("source 'prepared' needs `name` (see `myriad weights prepare`)")
        if self.source == WeightsSource.local_dir and self.path is None:
            raise ValueError("source 'local_dir' needs `path` (a local Hugging Face directory)")
        return self


class VisionConfig(Strict):
    kind: VisionKind = VisionKind.dinov2
    weights: WeightsRef = WeightsRef()
    image_size: int = Field(default=224, ge=14, le=1024)  # square ViT input (px)
    patch_size: int = Field(default=14, ge=2, le=32)
    # Size the checkpoint's position embeddings were trained at (interpolated to image_size).
    pos_embed_image_size: int = Field(default=224, ge=14)
    hidden_size: int = Field(default=384, ge=8)
    num_layers: int = Field(default=12, ge=1)
    num_heads: int = Field(default=6, ge=1)
    intermediate_size: int = Field(default=1536, ge=8)
    layer_norm_eps: float = Field(default=1e-6, gt=0)
    image_mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    image_std: tuple[float, float, float] = (0.229, 0.224, 0.225)

    @model_validator(mode="after")
    def _divisible(self) -> "VisionConfig":
        if self.image_size % self.patch_size:
            raise ValueError("image_size must be a multiple of patch_size")
        if self.hidden_size % self.num_heads:
            raise ValueError("hidden_size must be a multiple of num_heads")
        return self


class AdapterConfig(Strict):
    """Low-rank residual MLP on the ViT tokens: F' = F + W_up(GELU(W_down(F)))."""

    bottleneck: int = Field(default=64, ge=1)
    # W_up starts at zero so F' = F at step 0 (the pretrained behaviour is kept).
    zero_init: bool = True


class MapConvConfig(Strict):
    """Conv stack (3x3 conv + ReLU + 2x2 max-pool per block) over the anomaly map."""

    channels: tuple[int, ...] = Field(default=(16, 32, 64), min_length=1)
    grid: int = Field(ge=1, le=32)  # output grid side: grid*grid tokens


class QFormerConfig(Strict):
    weights: WeightsRef = WeightsRef()
    layout: QFormerLayout = QFormerLayout.bert
    num_layers: int = Field(default=2, ge=1)
    hidden_size: int = Field(default=384, ge=8)
    num_heads: int = Field(default=12, ge=1)
    intermediate_size: int = Field(default=1536, ge=8)
    num_queries: int = Field(default=32, ge=1)
    cross_attention_every: int = Field(default=1, ge=1)  # BLIP-2: 2
    layer_norm_eps: float = Field(default=1e-12, gt=0)

    @model_validator(mode="after")
    def _heads(self) -> "QFormerConfig":
        if self.hidden_size % self.num_heads:
            raise ValueError("hidden_size must be a multiple of num_heads")
        return self


class TPGConfig(MapConvConfig):
    grid: int = Field(default=3, ge=1, le=8)  # 3x3 = 9 map tokens
    num_learned: int = Field(default=9, ge=0)  # + 9 learned tokens = 18 VE tokens
    # Starting values of the cell-name gate's learned thresholds (actors.modeling.tpg): the
    # map's peak (0.5 = the expert's threshold), a cell's share of the defect's mass (0.1 =
    # the answer's 10% rule), and where that mass is counted from: this fraction of the way
    # from the map's median to its peak. `train.data.fit_gate` refits all three on training
    # maps (0.45: the best fixed base on the texture benchmark's training maps).
    gate_threshold: float = Field(default=0.5, gt=0.0, lt=1.0)
    share_threshold: float = Field(default=0.1, gt=0.0, lt=1.0)
    share_base: float = Field(default=0.45, ge=0.0, lt=1.0)


class VPGConfig(MapConvConfig):
    grid: int = Field(default=7, ge=1, le=16)  # 7x7 = 49 expert query tokens


class LLMConfig(Strict):
    weights: WeightsRef = WeightsRef()
    tokenizer: TokenizerKind = TokenizerKind.pretrained
    vocab_size: int = Field(ge=2)
    hidden_size: int = Field(ge=8)
    num_layers: int = Field(ge=1)
    num_heads: int = Field(ge=1)
    num_kv_heads: int = Field(ge=1)
    intermediate_size: int = Field(ge=8)
    max_position_embeddings: int = Field(default=2048, ge=16)
    rope_theta: float = Field(default=10000.0, gt=0)
    rms_norm_eps: float = Field(default=1e-5, gt=0)
    tie_word_embeddings: bool = False

    @model_validator(mode="after")
    def _heads(self) -> "LLMConfig":
        if self.hidden_size % self.num_heads or self.num_heads % self.num_kv_heads:
            raise ValueError("hidden_size % num_heads and num_heads % num_kv_heads must be 0")
        if self.tokenizer == TokenizerKind.ascii and self.vocab_size < 128:
            raise ValueError("the ascii tokenizer needs vocab_size >= 128")
        return self


class LoRAConfig(Strict):
    rank: int = Field(default=8, ge=1)
    alpha: float = Field(default=16.0, gt=0)
    targets: tuple[LoRATarget, ...] = (LoRATarget.q_proj, LoRATarget.v_proj)


class TrainableConfig(Strict):
    """What trains (DESIGN.md 2). Applied and asserted in one place: myriad.apply_trainable."""

    adapter: bool = True
    vpg: bool = True
    tpg: bool = True
    map_channel: bool = True  # the 4th (anomaly-map) input channel of the patch embedding
    projection: bool = True
    qformer: bool = False  # Q-Former layers + learned queries
    llm_lora: bool = False  # adds LoRA to the (frozen) LLM and trains it


class PromptConfig(Strict):
    version: Literal["myriad-v1"] = "myriad-v1"
    chat_format: ChatFormat = ChatFormat.chatml


class ModelConfig(Strict):
    """The Myriad LMM: VE-guided ViT + adapter, VPG, Q-Former, TPG, LLaMA."""

    vision: VisionConfig
    adapter: AdapterConfig = AdapterConfig()
    vpg: VPGConfig = VPGConfig()
    qformer: QFormerConfig = QFormerConfig()
    tpg: TPGConfig = TPGConfig()
    llm: LLMConfig
    lora: LoRAConfig = LoRAConfig()
    trainable: TrainableConfig = TrainableConfig()
    prompt: PromptConfig = PromptConfig()
    max_new_tokens: int = Field(default=48, ge=1, le=1024)
    seed: int = 0
