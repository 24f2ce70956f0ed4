"""The model section of the config: presets, validation, the paper preset on the meta device."""

from __future__ import annotations

import pytest
import torch

from configs import ConfigError, load_config


def test_presets_have_a_model_section():
    for name in ("tiny", "small", "paper"):
        cfg = load_config(name)
        assert cfg.model is not None, name
    tiny = load_config("tiny").model
    assert (tiny.vision.num_layers, tiny.vision.hidden_size) == (2, 32)
    assert (tiny.qformer.num_layers, tiny.qformer.num_queries) == (2, 4)
    assert (tiny.llm.num_layers, tiny.llm.vocab_size) == (2, 128)
    paper = load_config("paper")
    assert paper.expert.backbone.kind.value == "wide_resnet50_2" and paper.expert.feature_dim == 1024


@pytest.mark.parametrize("override, key", [
    ("model.vision.colour=1", "model.vision.colour"),
    ("model.vision.image_size=50", "model.vision"),  # not a multiple of the patch size
    ("model.trainable.everything=true", "model.trainable.everything"),
    ("model.llm.weights.source=prepared", "model.llm.weights"),  # prepared needs a name
    ("model.prompt.version=myriad-v9", "model.prompt.version"),
])
def test_bad_model_config_names_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config("tiny", [override])


def test_paper_builds_on_meta_with_expected_shapes_and_counts():
    from actors.modeling.myriad import build_myriad, parameter_counts, trainable_groups
    from actors.modeling.tokenizer_tiny import AsciiTokenizer

    c = load_config("paper").model
    with torch.device("meta"):
        model = build_myriad(c, None, pretrained=False, tokenizer=AsciiTokenizer())
        x = torch.empty(2, 3, 224, 224)
        m = torch.empty(2, 1, 224, 224)
        feats = model.vision(x, m)
        vt = model.qformer(model.adapter(feats), model.vpg(m))
    assert feats.shape == (2, 1 + 16 * 16, 1408)
    assert vt.shape == (2, 32 + 49, 768)
    assert model.projection(vt).shape == (2, 81, 4096)
    assert model.tpg(m).shape == (2, 18, 4096)
    counts = parameter_counts(model)
    # Vicuna-7B / LLaMA-7B: 6,738,415,616 parameters.
    assert sum(p.numel() for p in model.llm.parameters()) == 6_738_415_616
    vit = sum(p.numel() for p in model.vision.vit.parameters())
    assert 0.98e9 < vit < 1.0e9  # EVA-CLIP ViT-g/14 (BLIP-2): ~0.99 B
    # BLIP-2 Q-Former without its text embeddings / text FFN: 12 layers, 6 with cross-attention.
    h, ff, enc = 768, 3072, 1408
    attn = 4 * h * h + 4 * h + 2 * h  # q, k, v, o + biases + LayerNorm
    cross = 2 * h * h + 2 * h + 2 * enc * h + 2 * h + 2 * h  # q, o from h; k, v from the ViT
    ffn = h * ff + ff + ff * h + h + 2 * h
    qformer = 12 * (attn + ffn) + 6 * cross + 32 * h + 2 * h
    assert sum(p.numel() for p in model.qformer.parameters()) == qformer
    # Trainable by default: adapter, VPG, TPG, 4th channel, projection (computed from shapes).
    def convs(ch):
        n, cin = 0, 1
        for cout in ch:
            n += cin * cout * 9 + cout
            cin = cout
        return n
    adapter = 2 * enc + enc * 256 + 256 + 256 * enc + enc
    vpg = convs((32, 64, 128, 256)) + 256 * 768 + 768 + 49 * 768  # + position embeddings
    tpg = convs((32, 64, 128, 256)) + 256 * 4096 + 4096 + 9 * 4096 + 9 * 4096 + 5  # + cell names, gate (peak, share, base)
    map_channel = 1408 * 14 * 14
    projection = 768 * 4096 + 4096
    assert counts["trainable"] == adapter + vpg + tpg + map_channel + projection
    groups = trainable_groups(model)
    assert counts["total"] == vit + qformer + 6_738_415_616 + sum(
        sum(p.numel() for p in groups[g]) for g in ("adapter", "vpg", "tpg", "map_channel", "projection"))
