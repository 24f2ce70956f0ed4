"""The Q-Former loads a transformers BLIP-2 checkpoint (paper preset layout) exactly."""

from __future__ import annotations

import json

import torch
from safetensors.torch import save_file

from actors.modeling.qformer import QFormer
from configs.model_schema import QFormerConfig, QFormerLayout, WeightsRef, WeightsSource


def test_blip2_layout_loads_and_matches_transformers(tmp_path):
    from transformers import Blip2QFormerConfig, Blip2QFormerModel

    hc = Blip2QFormerConfig(hidden_size=32, num_hidden_layers=3, num_attention_heads=2,
                            intermediate_size=64, encoder_hidden_size=48,
                            cross_attention_frequency=2, hidden_dropout_prob=0.0,
                            attention_probs_dropout_prob=0.0)
    torch.manual_seed(0)
    ref = Blip2QFormerModel(hc).eval()
    query_tokens = torch.randn(1, 5, 32)
    state = {f"qformer.{k}": v.contiguous() for k, v in ref.state_dict().items()}
    state["query_tokens"] = query_tokens
    state["vision_model.embeddings.class_embedding"] = torch.zeros(1, 1, 48)  # ignored
    save_file(state, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps({"qformer_config": hc.to_dict()}))

    cfg = QFormerConfig(weights=WeightsRef(source=WeightsSource.local_dir, path=tmp_path),
                        layout=QFormerLayout.blip2, num_layers=3, hidden_size=32, num_heads=2,
                        intermediate_size=64, num_queries=5, cross_attention_every=2)
    ours = QFormer(cfg, encoder_width=48).eval()
    ours.load_pretrained(None)
    image = torch.randn(2, 10, 48)
    with torch.no_grad():
        want = ref(query_embeds=query_tokens.expand(2, -1, -1), encoder_hidden_states=image).last_hidden_state
        got = ours(image, torch.zeros(2, 0, 32))  # no expert queries: the plain BLIP-2 Q-Former
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
