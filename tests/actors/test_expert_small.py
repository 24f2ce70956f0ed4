"""The `small` expert on the real packaged EfficientNet-Lite0 weights (integration)."""

import numpy as np
import pytest
import torch

from actors.modeling import weights
from configs import load_config

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def small_cfg():
    cfg = load_config("small")
    weights.prepare(cfg.paths.weights_dir, ["tf_efficientnet_lite0"])
    return cfg


def test_converted_weights_recognise_a_cat(small_cfg):
    """The 1:1 mapping onto timm's names is right: ImageNet top-1 on a real photo."""
    import skimage.data

    from actors.modeling._timm import import_timm
    from actors.modeling.preprocess import to_batch

    model = import_timm().create_model("tf_efficientnet_lite0", pretrained=False)
    model.load_state_dict(weights.load_state_dict(small_cfg.paths.weights_dir, "tf_efficientnet_lite0"))
    model.eval()
    x = to_batch([skimage.data.chelsea()], 224, (0.5,) * 3, (0.5,) * 3)
    with torch.no_grad():
        top = int(model(x).argmax())
    assert 281 <= top <= 285  # ImageNet's domestic cats (tabby ... Egyptian cat)


def test_weights_prepare_is_idempotent(small_cfg):
    assert weights.prepare(small_cfg.paths.weights_dir, ["tf_efficientnet_lite0"]) == {"tf_efficientnet_lite0": 0.0}


def test_small_expert_on_real_textures(small_cfg, tmp_path):
    from training.evaluate import expert_metrics, predict_category
    from training.memory_bank import fit_bank
    from training.mvtec import open_category
    from training.textures import build_textures

    build_textures(tmp_path, seed=1, categories=("brick",), n_train=20, n_test_good=6, n_test_defect=5, progress=False)
    category = open_category(tmp_path, "brick")
    expert, meta = fit_bank(small_cfg.expert, small_cfg.paths.weights_dir, category.train_good(), tmp_path / "bank", "brick", progress=False)
    assert meta.dim == 152 and meta.fit["images"] == 20  # all in the bank, cross-fitted threshold
    assert meta.calibration["source"] == "cross_fit" and len(meta.calibration["scores"]) == 20
    pred = predict_category(expert, category, progress=False)
    metrics = expert_metrics(pred, meta.threshold)
    assert metrics["image_auroc"] >= 0.9
    assert metrics["pixel_auroc"] >= 0.9
    # maps peak inside the defect for most defective images
    hits = [mask.reshape(-1)[amap.argmax()] for amap, mask, bad in zip(pred.maps, pred.masks, pred.labels) if bad]
    assert np.mean(hits) >= 0.8


def test_folded_backbone_matches_timm_and_skips_unused_blocks(small_cfg):
    """Batch norm folded into the convs, trailing blocks dropped: the same feature maps."""
    import skimage.data

    from actors.modeling._timm import import_timm
    from actors.modeling.backbones import build_backbone
    from actors.modeling.preprocess import to_batch

    cfg = small_cfg.expert.backbone
    backbone = build_backbone(cfg, small_cfg.paths.weights_dir)
    names = [type(m).__name__ for m in backbone.modules()]
    assert "BatchNormAct2d" not in names and "BatchNorm2d" not in names
    assert len(backbone.net.blocks) == 5  # stage 3 (stride 16) is block 4's output
    reference = import_timm().create_model(cfg.kind.value, pretrained=False, features_only=True, out_indices=cfg.layers)
    full = import_timm().create_model(cfg.kind.value, pretrained=False)
    full.load_state_dict(weights.load_state_dict(small_cfg.paths.weights_dir, cfg.kind.value))
    reference.load_state_dict({k: v for k, v in full.state_dict().items() if k in reference.state_dict()})
    reference.eval()
    x = to_batch([skimage.data.chelsea(), skimage.data.coffee()], 288, (0.5,) * 3, (0.5,) * 3)
    with torch.no_grad():
        for want, got in zip(reference(x), backbone(x)):
            assert got.shape == want.shape
            assert torch.allclose(got, want, rtol=1e-4, atol=1e-4 * float(want.abs().max()))
