import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from actors.modeling.bank import open_bank, read_meta
from actors.modeling.errors import BankError, DatasetError
from actors.modeling.patchcore import PatchCore, gaussian_blur, lmm_map, normalized_map
from configs import load_config
from training.evaluate import expert_metrics, predict_category
from training.memory_bank import fit_bank
from training.mvtec import open_category


def test_embed_shapes(tiny_cfg):
    import torch

    expert = PatchCore(tiny_cfg.expert, None)
    emb = expert.embed(torch.zeros(2, 3, 64, 64))
    assert emb.shape == (2, 16, 16, 32)  # stride 4 of 64 px; feature_dim 32
    with pytest.raises(ValueError, match="empty image batch"):
        expert.embed(torch.zeros(0, 3, 64, 64))
    with pytest.raises(ValueError, match=r"\(B, 3, S, S\)"):
        expert.embed(torch.zeros(2, 4, 64, 64))


def test_gaussian_blur_preserves_mass_and_shape():
    import torch

    x = torch.zeros(1, 1, 33, 33)
    x[0, 0, 16, 16] = 1.0
    y = gaussian_blur(x, 2.0)
    assert y.shape == x.shape and abs(float(y.sum()) - 1.0) < 1e-4
    assert float(y[0, 0, 16, 16]) == float(y.max())


def test_fit_predict_finds_the_defect(tiny_cfg, tiny_dataset, tiny_bank):
    expert, meta = open_bank(tiny_bank, tiny_cfg.expert, None)
    assert meta.size == round(meta.fit["patches"] * tiny_cfg.expert.coreset_ratio)
    pred = predict_category(expert, open_category(tiny_dataset, "stripes"), progress=False)
    metrics = expert_metrics(pred, meta.threshold)
    assert metrics["image_auroc"] == 1.0
    assert metrics["pixel_auroc"] > 0.9
    assert metrics["pro"] > 0.5
    assert pred.maps.shape == (8, 64, 64)
    # the map peaks inside the defect for every anomalous image
    for amap, mask, label in zip(pred.maps, pred.masks, pred.labels):
        if label:
            assert mask.reshape(-1)[amap.argmax()]


def test_bank_roundtrip_is_identical(tiny_cfg, tiny_dataset, tiny_bank):
    import torch

    expert, _ = open_bank(tiny_bank, tiny_cfg.expert, None)
    sharded, _ = open_bank(tiny_bank, tiny_cfg.expert.model_copy(update={"shards": 3}), None)
    x = torch.randn(3, 3, 64, 64)
    a, b = expert.predict(x), sharded.predict(x)
    assert np.array_equal(a.scores, b.scores) and np.array_equal(a.anomaly_maps, b.anomaly_maps)


def test_incompatible_bank_is_refused(tiny_bank):
    cfg = load_config("tiny", ["expert.backbone.layers=[0, 1]"])
    with pytest.raises(BankError, match=r"expert.backbone: bank .* config"):
        open_bank(tiny_bank, cfg.expert, None)


def test_bfloat16_backbone_is_close_and_its_bank_key_is_checked(tiny_cfg, tiny_bank, tmp_path):
    import torch

    bf = tiny_cfg.expert.model_copy(update={"backbone_dtype": "bfloat16"})
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    a, b = PatchCore(tiny_cfg.expert, None).embed(x), PatchCore(bf, None).embed(x)
    assert b.dtype == torch.float32 and b.shape == a.shape
    rel = float((a - b).norm() / a.norm())
    assert 0 < rel < 0.02, rel  # bf16 rounding: different, but by about a percent at most
    with pytest.raises(BankError, match=r"expert.backbone_dtype: bank 'float32', config 'bfloat16'"):
        open_bank(tiny_bank, bf, None)
    # Banks written before the key existed were fit in float32 and still open.
    old = tmp_path / "old"
    shutil.copytree(tiny_bank, old)
    meta = json.loads((old / "bank.json").read_text())
    del meta["expert"]["backbone_dtype"]
    (old / "bank.json").write_text(json.dumps(meta))
    open_bank(old, tiny_cfg.expert, None)


def test_bank_version_and_garbage(tiny_bank, tmp_path, tiny_cfg):
    bad = tmp_path / "bank"
    shutil.copytree(tiny_bank, bad)
    meta = json.loads((bad / "bank.json").read_text())
    meta["version"] = 99
    (bad / "bank.json").write_text(json.dumps(meta))
    with pytest.raises(BankError, match="version 99"):
        read_meta(bad)
    with pytest.raises(BankError, match="not a memory bank"):
        open_bank(tmp_path, tiny_cfg.expert, None)


def test_few_shot_and_unreadable_files(tiny_cfg, tiny_dataset, tmp_path):
    good = open_category(tiny_dataset, "stripes").train_good()
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"")
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(good[0].read_bytes()[:200])
    expert, meta = fit_bank(tiny_cfg.expert, None, [good[0], broken, truncated], tmp_path / "b", progress=False)
    assert meta.fit["images"] == 1
    assert {s["reason"] for s in meta.fit["skipped"]} == {"empty", "truncated"}
    assert meta.calibration["source"] == "fit_images" and meta.threshold > 0


def test_cross_fit_calibration_scores_each_image_without_its_fold(tiny_cfg, tiny_dataset, tiny_bank):
    from actors.modeling.preprocess import decode_image, to_batch

    good = open_category(tiny_dataset, "stripes").train_good()
    expert, meta = open_bank(tiny_bank, tiny_cfg.expert, None)
    cal = meta.calibration
    assert cal["source"] == "cross_fit" and cal["folds"] == min(5, len(good))
    assert meta.fit["images"] == len(good) == len(cal["scores"])  # no image kept out of the bank
    # Against the bank without their fold's rows, the images score at least as high as
    # against the whole bank (fewer rows, farther neighbours), and some strictly higher.
    order = [good.index(type(good[0])(p)) for p in cal["images"]]
    x = to_batch([decode_image(good[i]) for i in order], tiny_cfg.expert.image_size, *expert.mean_std)
    whole = expert.predict(x).scores
    cross = np.asarray(cal["scores"])
    assert np.all(cross >= whole * (1 - 1e-5))
    assert np.any(cross > whole * 1.01)


def test_held_out_calibration(tiny_cfg, tiny_dataset, tmp_path):
    good = open_category(tiny_dataset, "stripes").train_good()
    cfg = tiny_cfg.expert.model_copy(update={"calibration": "held_out"})
    _, meta = fit_bank(cfg, None, good, tmp_path / "b", progress=False)
    n_cal = int(len(good) * cfg.calibration_fraction)
    assert meta.calibration["source"] == "held_out" and len(meta.calibration["scores"]) == n_cal
    assert meta.fit["images"] == len(good) - n_cal


def test_empty_train_folder(tmp_path):
    (tmp_path / "c" / "train" / "good").mkdir(parents=True)
    with pytest.raises(DatasetError, match="no images"):
        open_category(tmp_path, "c").train_good()
    with pytest.raises(DatasetError, match="category 'x' not found"):
        open_category(tmp_path, "x")


def test_all_images_unreadable(tiny_cfg, tmp_path):
    bad = tmp_path / "x.png"
    bad.write_bytes(b"garbage")
    with pytest.raises(DatasetError, match="none of the 1 normal images"):
        fit_bank(tiny_cfg.expert, None, [bad], tmp_path / "b", progress=False)


def test_normalized_map():
    m = normalized_map(np.array([0.0, 1.0, 2.0, 5.0]), threshold=1.0)
    assert m.tolist() == [0.0, 0.5, 1.0, 1.0]
    with pytest.raises(ValueError):
        normalized_map(np.zeros(2), 0.0)


def test_grayscale_and_palette_inputs_score(tiny_cfg, tiny_bank, tmp_path):
    import torch  # noqa: F401

    from actors.modeling.preprocess import decode_image, to_batch

    expert, _ = open_bank(tiny_bank, tiny_cfg.expert, None)
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (50, 70), dtype=np.uint8))
    sixteen = Image.fromarray((np.asarray(img).astype(np.uint16) * 257))
    for name, pic in (("L", img), ("P", img.convert("P")), ("I16", sixteen)):
        path = tmp_path / f"{name}.png"
        pic.save(path)
        arr = decode_image(path)
        out = expert.predict(to_batch([arr], 64, *expert.mean_std))
        assert np.isfinite(out.scores).all()


def test_normalized_map_floor_and_bank_normalize(tiny_bank):
    m = normalized_map(np.array([1.0, 2.0, 3.0, 9.0]), threshold=3.0, floor=1.0)
    assert m.tolist() == [0.0, 0.25, 0.5, 1.0]
    meta = read_meta(tiny_bank)
    assert 0 < meta.normal_level < meta.threshold
    assert float(meta.normalize(np.array([meta.threshold]))[0]) == pytest.approx(0.5)


def test_lmm_map_centres_the_background_and_keeps_peaks():
    rng = np.random.default_rng(0)
    base = 10.0 + rng.normal(0, 0.5, (32, 32)).astype(np.float32)  # (32, 32) background
    base[4:8, 4:8] += 8.0  # a defect
    m = lmm_map(base, threshold=16.0, normal_level=10.0)
    assert m.dtype == np.float32 and m.shape == (32, 32)
    # The background's median lands on normal_level / (2 * threshold); the defect stays above 0.5.
    assert float(np.median(m)) == pytest.approx(10.0 / 32.0, abs=1e-3)
    assert m[4:8, 4:8].min() > 0.5 > m[16:, 16:].max()
    # A map lifted as a whole (a warmer surface, new lighting) reads the same as before.
    np.testing.assert_allclose(lmm_map(base + 3.0, 16.0, 10.0), m, atol=1e-5)
    # Uncentred, the same lift would push the background towards the threshold.
    assert float(np.median(normalized_map(base + 3.0, 16.0))) > float(np.median(m)) + 0.09
    with pytest.raises(ValueError, match="normal_level"):
        lmm_map(base, threshold=16.0, normal_level=0.0)
    with pytest.raises(ValueError, match="normal_level"):
        lmm_map(base, threshold=16.0, normal_level=20.0)


def test_calibrated_threshold_rules(tiny_cfg):
    from statistics import NormalDist

    from training.memory_bank import calibrated_threshold

    scores = [1.0, 2.0, 3.0, 4.0]
    e = tiny_cfg.expert
    assert calibrated_threshold(scores, e.model_copy(update={"threshold_rule": "max"})) == 4.0
    z = NormalDist().inv_cdf(1 - 0.001)
    want = 2.5 + z * float(np.std(scores, ddof=1))
    fit = e.model_copy(update={"threshold_rule": "normal_fit", "false_alarm_rate": 0.001})
    assert calibrated_threshold(scores, fit) == pytest.approx(want)
    # never below the highest normal seen; one score has no spread to fit
    assert calibrated_threshold([5.0, 5.0, 5.0], fit) == 5.0
    assert calibrated_threshold([3.0], fit) == 3.0
    assert calibrated_threshold(scores, fit.model_copy(update={"threshold_margin": 2.0})) == pytest.approx(2 * want)


def test_batchnorm_folding_keeps_the_features():
    """Conv + batch norm (with real, non-trivial statistics) merge into one conv."""
    from actors.modeling.backbones import TinyCNN, fold_batchnorm

    net = TinyCNN(8, seed=3)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.2, 3.0)
    net.eval()
    folded = fold_batchnorm(net)
    assert folded is not net
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    x = torch.randn(2, 3, 48, 48, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        for a, b in zip(net(x), folded(x)):
            assert torch.allclose(a, b, rtol=1e-4, atol=1e-5)


def test_batchnorm_folding_leaves_a_net_without_pairs_alone():
    from actors.modeling.backbones import fold_batchnorm

    net = torch.nn.Sequential(torch.nn.BatchNorm2d(3), torch.nn.Conv2d(3, 4, 3))
    assert fold_batchnorm(net) is net  # norm before the conv: nothing to fold


def test_heap_allocations_setting():
    import platform

    from actors.modeling.allocator import keep_freed_memory

    expected = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"
    assert keep_freed_memory() is expected
    assert keep_freed_memory() is expected  # idempotent


def test_neighbourhood_counts_the_zero_padding_at_the_edge(tiny_cfg, tiny_bank, tmp_path):
    import torch

    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    one_stage = tiny_cfg.expert.backbone.model_copy(update={"layers": (1,)})  # no upsampled stage
    on_cfg = tiny_cfg.expert.model_copy(update={"backbone": one_stage, "feature_dim": None})
    on = PatchCore(on_cfg, None).embed(x)  # default: zero padding counted
    off = PatchCore(on_cfg.model_copy(update={"neighbourhood_zero_padding": False}), None).embed(x)
    # Interior patches average the same nine cells; a corner averages 4 real cells, so it
    # is 4/9 of the in-map mean, an edge 6/9 (anomalib / PatchCore's AvgPool2d(3, 1, 1)).
    torch.testing.assert_close(on[:, 1:-1, 1:-1], off[:, 1:-1, 1:-1])
    torch.testing.assert_close(on[:, 0, 0], off[:, 0, 0] * 4 / 9, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(on[:, 0, 5], off[:, 0, 5] * 6 / 9, rtol=1e-5, atol=1e-6)
    # A bank written before the key existed was fit without the padding: refused now.
    old = tmp_path / "old"
    shutil.copytree(tiny_bank, old)
    meta = json.loads((old / "bank.json").read_text())
    del meta["expert"]["neighbourhood_zero_padding"]
    (old / "bank.json").write_text(json.dumps(meta))
    with pytest.raises(BankError, match=r"expert.neighbourhood_zero_padding: bank False, config True"):
        open_bank(old, tiny_cfg.expert, None)
    open_bank(old, tiny_cfg.expert.model_copy(update={"neighbourhood_zero_padding": False}), None)
