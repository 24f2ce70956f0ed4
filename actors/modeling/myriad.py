"""The Myriad LMM (Li et al., arXiv 2310.19070; DESIGN.md 2): parts, forward, generate.

    x, m ──► VEGuidedViT ──► Adapter ──► F' ─┐
    m ──► VPG (49 expert queries) ───────────┴► Q-Former ──► projection ──► Q tokens (Nq+49)
    m ──► TPG ──► VE tokens (9 + 9 learned)
    LLM input = embed(prefix) ‖ Q tokens ‖ VE tokens ‖ embed(question … answer)

``forward(..., labels=None)`` returns the loss only when labels are given (prompt and visual
positions are -100); ``generate`` runs under ``no_grad`` and returns only the new tokens.
What trains is decided in ``apply_trainable`` (from ``TrainableConfig``) and asserted.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn

from actors.modeling.adapter import TokenAdapter
from actors.modeling.grid import GRID_LABELS
from actors.modeling.llm import LoRALinear, add_lora, build_llm, load_llm_weights
from actors.modeling.lmm_errors import ModelInputError
from actors.modeling.prompt import ParsedAnswer, PromptTemplate, parse_answer
from actors.modeling.qformer import QFormer
from actors.modeling.tokenizer_tiny import AsciiTokenizer, TextTokenizer, load_tokenizer
from actors.modeling.tpg import TextualPromptGenerator
from actors.modeling.vision_encoder import VEGuidedViT
from actors.modeling.vit_preprocess import ViTPreprocessor
from actors.modeling.vpg import VisualPromptGenerator
from configs.model_schema import ModelConfig, TokenizerKind, TrainableConfig

log = logging.getLogger(__name__)
IGNORE = -100


@dataclass
class VisualTokens:
    qformer: torch.Tensor  # (B, Nq + 49, D_llm) projected Q-Former outputs
    ve: torch.Tensor  # (B, 18, D_llm) TPG tokens

    def joined(self) -> torch.Tensor:  # (B, V, D_llm)
        return torch.cat([self.qformer, self.ve], dim=1)


@dataclass
class TextBatch:
    text_ids: torch.Tensor  # (B, T) question suffix (+ answer + eos), right-padded
    text_mask: torch.Tensor  # (B, T) 1 for real tokens
    labels: torch.Tensor | None  # (B, T) answer ids, -100 on the question and padding


class MyriadOutput(NamedTuple):
    # A NamedTuple, not a dataclass: DeepSpeed ZeRO-3 finds the tensors of tuples and dicts
    # only, and needs them to hook the end of the model's backward.
    logits: torch.Tensor  # (B, Lp + V + T, vocab)
    loss: torch.Tensor | None  # mean CE over answer tokens, only when labels were given


@dataclass
class Answer:
    text: str
    verdict: ParsedAnswer
    new_tokens: int


class MyriadModel(nn.Module):
    def __init__(self, config: ModelConfig, tokenizer: TextTokenizer) -> None:
        super().__init__()
        self.config = config
        self.tokenizer = tokenizer
        self.template = PromptTemplate(config.prompt)
        self.preprocessor = ViTPreprocessor.from_vision_config(config.vision)
        self.vision = VEGuidedViT(config.vision)
        self.adapter = TokenAdapter(config.vision.hidden_size, config.adapter)
        self.vpg = VisualPromptGenerator(config.vpg, config.qformer.hidden_size)
        self.qformer = QFormer(config.qformer, config.vision.hidden_size)
        self.projection = nn.Linear(config.qformer.hidden_size, config.llm.hidden_size)
        self.tpg = TextualPromptGenerator(config.tpg, config.llm.hidden_size)
        self.llm = build_llm(config.llm)
        self.lora: list[LoRALinear] = []
        prefix = tokenizer.encode(self.template.parts().prefix, add_special_tokens=False)
        self.register_buffer("prefix_ids", torch.tensor(prefix, dtype=torch.long), persistent=False)

    @torch.no_grad()
    def init_cell_names(self) -> None:
        """TPG cell-name vectors := the LLM's mean input embedding of each grid label."""
        if self.config.tpg.grid ** 2 != len(GRID_LABELS):
            return  # another grid has no labels to borrow; the random init stays
        embed = self.llm.get_input_embeddings().weight
        names = []
        for label in GRID_LABELS:
            ids = self.tokenizer.encode(" " + label, add_special_tokens=False)
            names.append(embed[torch.tensor(ids, dtype=torch.long)].float().mean(dim=0))
        self.tpg.init_cell_names(torch.stack(names))

    # -- sizes ------------------------------------------------------------------------
    @property
    def num_visual_tokens(self) -> int:
        return self.config.qformer.num_queries + self.vpg.num_tokens + self.tpg.num_tokens

    def context_used(self, text_len: int) -> int:
        return self.prefix_ids.numel() + self.num_visual_tokens + text_len

    # -- encoding ---------------------------------------------------------------------
    def check_visual_inputs(self, pixel_values: torch.Tensor, maps: torch.Tensor) -> None:
        s = self.config.vision.image_size
        if pixel_values.ndim != 4 or pixel_values.shape[0] == 0:
            raise ModelInputError(f"pixel_values must be a non-empty (B, 3, {s}, {s}) batch, got {tuple(pixel_values.shape)}")
        if tuple(pixel_values.shape[1:]) != (3, s, s):
            raise ModelInputError(f"pixel_values must be (B, 3, {s}, {s}), got {tuple(pixel_values.shape)}")
        want = (pixel_values.shape[0], 1, s, s)
        if tuple(maps.shape) != want:
            raise ModelInputError(f"maps must be {want} to match the images, got {tuple(maps.shape)}")
        if not torch.isfinite(maps).all():
            raise ModelInputError("maps contain NaN or infinite values")
        if maps.min() < 0 or maps.max() > 1:
            raise ModelInputError(f"maps must lie in [0, 1], got [{maps.min():.4g}, {maps.max():.4g}]")

    def encode(self, pixel_values: torch.Tensor, maps: torch.Tensor) -> VisualTokens:
        """(B, 3, S, S), (B, 1, S, S) -> Q-Former and VE tokens at the LLM width."""
        self.check_visual_inputs(pixel_values, maps)
        feats = self.adapter(self.vision(pixel_values, maps))  # F': (B, 1 + N, D_vit)
        queries = self.qformer(feats, self.vpg(maps))  # (B, Nq + 49, H_q)
        return VisualTokens(self.projection(queries), self.tpg(maps))

    # -- text -------------------------------------------------------------------------
    def encode_text(self, questions: list[str | None], answers: list[str] | None = None) -> TextBatch:
        """Tokenise question suffixes (and answers + eos, as labels) into a right-padded batch."""
        if not questions:
            raise ModelInputError("empty question batch")
        if answers is not None and len(answers) != len(questions):
            raise ModelInputError(f"{len(questions)} questions but {len(answers)} answers")
        tok, seqs, labs = self.tokenizer, [], []
        for i, q in enumerate(questions):
            suffix = tok.encode(self.template.parts(q).suffix, add_special_tokens=False)
            ans = [] if answers is None else tok.encode(answers[i], add_special_tokens=False) + [tok.eos_token_id]
            seqs.append(suffix + ans)
            labs.append([IGNORE] * len(suffix) + ans)
        t = max(map(len, seqs))
        limit = self.config.llm.max_position_embeddings
        if self.context_used(t) > limit:
            raise ModelInputError(
                f"prompt too long: {self.context_used(t)} tokens (prefix + {self.num_visual_tokens} "
                f"visual + {t} text) exceed the LLM context of {limit}"
            )
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        ids = torch.full((len(seqs), t), pad, dtype=torch.long)
        mask = torch.zeros((len(seqs), t), dtype=torch.long)
        labels = torch.full((len(seqs), t), IGNORE, dtype=torch.long)
        for i, (s, lab) in enumerate(zip(seqs, labs)):
            ids[i, : len(s)] = torch.tensor(s)
            mask[i, : len(s)] = 1
            labels[i, : len(s)] = torch.tensor(lab)
        return TextBatch(ids, mask, labels if answers is not None else None)

    def _embed(self, ids: torch.Tensor) -> torch.Tensor:
        return self.llm.get_input_embeddings()(ids.to(self.prefix_ids.device))

    def forward(
        self, pixel_values: torch.Tensor, maps: torch.Tensor, text_ids: torch.Tensor,
        text_mask: torch.Tensor, labels: torch.Tensor | None = None,
    ) -> MyriadOutput:
        """Teacher-forced pass; ``labels`` (B, T) aligned with ``text_ids`` give the loss."""
        visual = self.encode(pixel_values, maps).joined()  # (B, V, D)
        b, v = visual.shape[:2]
        if text_ids.shape[0] != b:
            raise ModelInputError(f"{b} images but {text_ids.shape[0]} texts")
        prefix = self._embed(self.prefix_ids)[None].expand(b, -1, -1)  # (B, Lp, D)
        embeds = torch.cat([prefix, visual.to(prefix.dtype), self._embed(text_ids)], dim=1)
        head = prefix.shape[1] + v
        mask = torch.cat([text_mask.new_ones(b, head), text_mask], dim=1)
        full_labels = None
        if labels is not None:
            full_labels = torch.cat([labels.new_full((b, head), IGNORE), labels], dim=1)
        out = self.llm(inputs_embeds=embeds, attention_mask=mask, labels=full_labels)
        return MyriadOutput(out.logits, out.loss if labels is not None else None)

    # -- generation -------------------------------------------------------------------
    @torch.no_grad()
    def generate(
        self, pixel_values: torch.Tensor, maps: torch.Tensor, questions: list[str | None],
        max_new_tokens: int | None = None,
    ) -> list[Answer]:
        """Greedy answers, one per image; only the new tokens are decoded."""
        if len(questions) != pixel_values.shape[0]:
            raise ModelInputError(f"{pixel_values.shape[0]} images but {len(questions)} questions")
        return self.generate_from_visual(self.encode(pixel_values, maps).joined(), questions, max_new_tokens)

    @torch.no_grad()
    def generate_from_visual(
        self, visual: torch.Tensor, questions: list[str | None], max_new_tokens: int | None = None,
    ) -> list[Answer]:
        """Greedy answers from visual tokens (B, V, D_llm) already encoded (``encode().joined()``).

        Serving splits the model here: the encoder deployment runs ``encode``, the LLM
        deployment (possibly tensor-parallel) runs this.
        """
        max_new = max_new_tokens or self.config.max_new_tokens
        if visual.ndim != 3 or visual.shape[0] != len(questions) or visual.shape[2] != self.config.llm.hidden_size:
            raise ModelInputError(
                f"visual tokens must be ({len(questions)}, V, {self.config.llm.hidden_size}), got {tuple(visual.shape)}")
        batch = self.encode_text(questions)
        lengths = batch.text_mask.sum(1).tolist()
        if self.context_used(max(lengths)) + max_new > self.config.llm.max_position_embeddings:
            raise ModelInputError(
                f"prompt ({self.context_used(max(lengths))} tokens) + {max_new} new tokens exceed "
                f"the LLM context of {self.config.llm.max_position_embeddings}"
            )
        prefix = self._embed(self.prefix_ids)
        rows = [torch.cat([prefix, visual[i].to(prefix.dtype), self._embed(batch.text_ids[i, :n])])
                for i, n in enumerate(lengths)]
        width = max(r.shape[0] for r in rows)
        embeds = prefix.new_zeros(len(rows), width, prefix.shape[-1])
        mask = torch.zeros(len(rows), width, dtype=torch.long, device=prefix.device)
        for i, r in enumerate(rows):  # left padding: every prompt ends at the last column
            embeds[i, width - r.shape[0]:] = r
            mask[i, width - r.shape[0]:] = 1
        tok = self.tokenizer
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        new = self.llm.generate(
            inputs_embeds=embeds, attention_mask=mask, max_new_tokens=max_new, do_sample=False,
            eos_token_id=tok.eos_token_id, pad_token_id=pad,
        )  # (B, <= max_new): only new tokens when generating from inputs_embeds
        answers = []
        for row in new.tolist():
            if tok.eos_token_id in row:
                row = row[: row.index(tok.eos_token_id)]
            text = tok.decode(row, skip_special_tokens=True).strip()
            answers.append(Answer(text, parse_answer(text), len(row)))
        return answers


# -- building and trainable parts ---------------------------------------------------------


def build_myriad(
    config: ModelConfig, weights_dir: Path | None = None, *, pretrained: bool = True,
    tokenizer: TextTokenizer | None = None,
) -> MyriadModel:
    """Build from config; ``pretrained`` loads the parts' configured weights (strict)."""
    torch.manual_seed(config.seed)
    llm_dir = None
    if tokenizer is None:
        if config.llm.tokenizer == TokenizerKind.ascii:
            tokenizer = AsciiTokenizer()
        else:
            from actors.modeling.hf_dirs import resolve_weights_dir

            llm_dir = resolve_weights_dir(config.llm.weights, weights_dir)
            tokenizer = load_tokenizer(llm_dir)
    model = MyriadModel(config, tokenizer)
    if pretrained:
        model.vision.load_pretrained(weights_dir)
        model.qformer.load_pretrained(weights_dir)
        load_llm_weights(model.llm, config.llm, weights_dir)
    model.init_cell_names()
    if config.trainable.llm_lora:
        model.lora = add_lora(model.llm, config.lora)
    apply_trainable(model, config.trainable)
    return model


def trainable_groups(model: MyriadModel) -> dict[str, list[nn.Parameter]]:
    """Every trainable group of ``TrainableConfig`` and the parameters it owns."""
    return {
        "adapter": list(model.adapter.parameters()),
        "vpg": list(model.vpg.parameters()),
        "tpg": list(model.tpg.parameters()),
        "map_channel": list(model.vision.map_embed.parameters()),
        "projection": list(model.projection.parameters()),
        "qformer": list(model.qformer.parameters()),
        "llm_lora": [p for m in model.lora for p in (*m.lora_a.parameters(), *m.lora_b.parameters())],
    }


def expected_trainable(model: MyriadModel, cfg: TrainableConfig) -> set[int]:
    groups = trainable_groups(model)
    return {id(p) for name, params in groups.items() if getattr(cfg, name) for p in params}


def apply_trainable(model: MyriadModel, cfg: TrainableConfig) -> None:
    """The one place that freezes and unfreezes (DESIGN.md 2); asserted right after."""
    if cfg.llm_lora and not model.lora:
        raise ValueError("trainable.llm_lora is set but the model has no LoRA modules")
    want = expected_trainable(model, cfg)
    for p in model.parameters():
        p.requires_grad_(id(p) in want)
    assert_trainable(model, cfg)


def assert_trainable(model: MyriadModel, cfg: TrainableConfig) -> None:
    want = expected_trainable(model, cfg)
    names = {id(p): n for n, p in model.named_parameters()}
    have = {id(p) for p in model.parameters() if p.requires_grad}
    if want != have:
        extra = sorted(names[i] for i in have - want)[:5]
        missing = sorted(names[i] for i in want - have)[:5]
        raise AssertionError(f"trainable set differs from config: unexpected {extra}, frozen {missing}")


def parameter_counts(model: nn.Module) -> dict[str, int]:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"total": total, "trainable": trainable}
