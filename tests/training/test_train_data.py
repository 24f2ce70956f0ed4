"""Instruction data (Ray Data): determinism, balance, targets, tokens, Parquet; config extends."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from actors.modeling.grid import GRID_LABELS
from actors.modeling.prompt import NORMAL_ANSWER, parse_answer
from configs import ConfigError, load_config
from training.data import is_anomalous, list_sources, rank_ids


def data_cfg(tiny_dataset, tmp_path, **train):
    over = [f"train.data.root={tiny_dataset}", "train.data.categories=[stripes]",
            f"train.storage_dir={tmp_path / 'train'}"] + [f"train.{k}={v}" for k, v in train.items()]
    return load_config("tiny", over)


def test_balance_and_rank_ids():
    flags = [is_anomalous(i, 0.5) for i in range(100)]
    assert sum(flags) == 50 and flags[:4] == [False, True, False, True]
    assert sum(is_anomalous(i, 0.25) for i in range(40)) == 10
    ids = [rank_ids(16, 3, r, 2).tolist() for r in range(2)]
    assert ids == [[16, 18, 20], [17, 19, 21]]  # the two ranks cover 16..21 once


def test_sources_and_folds(tiny_dataset):
    src = list_sources(tiny_dataset, ("stripes",), (), 2)
    assert len(src) == 24 and {s.fold for s in src} == {0, 1}
    assert all("/train/good/" in s.path for s in src)  # never test images


def test_samples_deterministic_and_targets_match_masks(ray_cluster, tiny_dataset, tmp_path):
    from training.data import build_dataset, prepare, tokenizer_dir

    cfg = data_cfg(tiny_dataset, tmp_path)
    sources, banks = prepare(cfg)
    assert set(banks) == {("stripes", 0), ("stripes", 1)}
    ids = rank_ids(0, 8, 0, 1)
    a = build_dataset(cfg, sources, banks, ids, tokenizer_dir(cfg)).take_all()
    b = build_dataset(cfg, sources, banks, ids, tokenizer_dir(cfg)).take_all()
    assert [r["id"] for r in a] == list(range(8))  # order kept
    for ra, rb in zip(a, b):
        assert np.array_equal(ra["image"], rb["image"]) and ra["answer"] == rb["answer"]
        assert np.array_equal(ra["map"], rb["map"])
    assert sum(r["anomalous"] for r in a) == 4
    for r in a:
        work = max(cfg.model.vision.image_size, cfg.expert.image_size)
        assert r["image"].shape == (work, work, 3) and r["map"].shape == (work, work)
        assert 0.0 <= float(r["map"].min()) and float(r["map"].max()) <= 1.0
        verdict = parse_answer(r["answer"])
        assert verdict.parsed and verdict.anomalous == r["anomalous"]
        positions = [p for p in r["positions"].split("|") if p]
        assert list(verdict.positions) == [p for p in GRID_LABELS if p in positions]
        if not r["anomalous"]:
            assert r["answer"] == NORMAL_ANSWER and r["kind"] == "good"


def test_tokens_equal_model_encode_text(tiny_cfg):
    from actors.modeling.myriad import build_myriad
    from training.data_ops import tokenize

    model = build_myriad(tiny_cfg.model)
    answers = ["Yes, there exists anomalies in the image, at the top left of the image.", NORMAL_ANSWER]
    ref = model.encode_text([None, None], answers)
    for i, ans in enumerate(answers):
        ids, labels = tokenize(model.tokenizer, model.template, None, ans)
        n = len(ids)
        assert ref.text_ids[i, :n].tolist() == ids and ref.labels[i, :n].tolist() == labels
        assert int(ref.text_mask[i].sum()) == n


def test_write_instructions_parquet(ray_cluster, tiny_dataset, tmp_path):
    from training.data import write_instructions

    cfg = data_cfg(tiny_dataset, tmp_path)
    info = write_instructions(cfg, tmp_path / "out", samples=6)
    table = pq.read_table(tmp_path / "out")
    assert info["rows"] == 6 and table.num_rows == 6
    for col in ("id", "category", "kind", "anomalous", "positions", "answer", "image", "map",
                "text_ids", "labels"):
        assert col in table.column_names
    assert sorted(table.column("id").to_pylist()) == list(range(6))


def test_manifest_source(tiny_dataset, tmp_path):
    import pyarrow as pa

    paths = sorted(str(p) for p in (tiny_dataset / "stripes" / "train" / "good").glob("*.png"))[:5]
    pq.write_table(pa.table({"path": paths, "category": ["stripes"] * 5}), tmp_path / "m.parquet")
    src = list_sources(None, ("stripes",), (tmp_path / "m.parquet",), 1)
    assert [s.path for s in src] == paths


def test_config_extends_and_train_section(tmp_path):
    cfg = load_config("configs/train/small.yaml")
    assert cfg.preset == "small" and cfg.train.scaling.num_workers == 2
    (tmp_path / "base.yaml").write_text("extends: tiny\ntrain: {max_steps: 9}\n")
    (tmp_path / "child.yaml").write_text("extends: base.yaml\ntrain: {zero_stage: 3}\n")
    child = load_config(tmp_path / "child.yaml")
    assert (child.train.max_steps, child.train.zero_stage, child.train.micro_batch_size) == (9, 3, 2)
    (tmp_path / "loop.yaml").write_text("extends: loop.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(tmp_path / "loop.yaml")
    with pytest.raises(ConfigError, match="train.zero_stage"):
        load_config("tiny", ["train.zero_stage=4"])
    with pytest.raises(ConfigError, match="lr_scale"):
        load_config("tiny", ["train.optimizer.lr_scale={vit: 2}"])


def test_map_gain_jitter_is_deterministic_and_bounded():
    from training.data_ops import ExpertMaps

    expert = load_config("tiny").expert.model_dump(mode="json")
    off = ExpertMaps(expert, ".", {})
    assert {off.sample_gain(i) for i in range(50)} == {1.0}
    on = ExpertMaps(expert, ".", {}, gain=(1.0, 2.0), gain_ratio=0.5, seed=3)
    gains = np.array([on.sample_gain(i) for i in range(400)])
    assert gains.min() >= 1.0 and gains.max() <= 2.0
    assert 0.4 < np.mean(gains == 1.0) < 0.6  # about half the samples are left alone
    jittered = gains[gains != 1.0]
    assert np.median(jittered) == pytest.approx(np.sqrt(2.0), rel=0.1)  # log-uniform on [1, 2]
    again = ExpertMaps(expert, ".", {}, gain=(1.0, 2.0), gain_ratio=0.5, seed=3)
    assert [again.sample_gain(i) for i in range(400)] == gains.tolist()
    other = ExpertMaps(expert, ".", {}, gain=(1.0, 2.0), gain_ratio=0.5, seed=4)
    assert [other.sample_gain(i) for i in range(400)] != gains.tolist()


def test_map_gain_range_is_validated():
    with pytest.raises(ConfigError, match="map_gain"):
        load_config("tiny", ["train.data.map_gain=[2.0, 1.0]"])


def test_map_gain_on_normal_samples_only_leaves_defect_maps_alone(tiny_cfg, tiny_dataset, tiny_bank):
    from actors.modeling.preprocess import decode_image
    from training.data_ops import ExpertMaps
    from training.mvtec import open_category

    paths = open_category(tiny_dataset, "stripes").train_good()[:6]
    batch = {"image": np.stack([decode_image(p) for p in paths]), "category": np.array(["stripes"] * 6),
             "fold": np.zeros(6, np.int64), "id": np.arange(6),
             "anomalous": np.array([0, 1, 0, 1, 0, 1], bool)}
    args = (tiny_cfg.expert.model_dump(mode="json"), str(tiny_cfg.paths.weights_dir),
            {"stripes|0": str(tiny_bank)})
    plain = ExpertMaps(*args)(dict(batch))["map"].astype(np.float32)
    jitter = ExpertMaps(*args, gain=(1.5, 2.0), gain_ratio=1.0, seed=0, gain_samples="normal")
    gained = jitter(dict(batch))["map"].astype(np.float32)
    anomalous = batch["anomalous"]
    assert np.array_equal(gained[anomalous], plain[anomalous])
    warmer = gained[~anomalous].mean(axis=(1, 2)) / plain[~anomalous].mean(axis=(1, 2))
    assert np.all(warmer > 1.3)  # gain >= 1.5, a little lost to the clip at 1


def test_scratch_styles_are_drawn_per_scratch(tiny_dataset, monkeypatch):
    """`train.data.scratch_styles` reaches the scratch generator: with two styles both are
    drawn, deterministically per sample id; a style outside the two fails at load."""
    import training.data_ops as ops

    seen: list[tuple[int, str]] = []
    real = ops.GENERATORS["scratch"]

    def spy(img, rng, config, **kw):
        seen.append((current, config.scratch_style))
        return real(img, rng, config=config, **kw)

    monkeypatch.setitem(ops.GENERATORS, "scratch", spy)
    cfg = load_config("tiny", [f"train.data.root={tiny_dataset}", "train.data.kinds=[scratch]",
                               "train.data.anomaly_ratio=1.0", "train.data.scratch_styles=[additive, groove]"])
    sources = [s.__dict__ for s in list_sources(tiny_dataset, ("stripes",), (), 2)]
    syn = ops.Synthesize(cfg.train.data.model_dump(mode="json"), sources, 64)
    outs = []
    for current in range(40):
        outs.append(syn.one(current))
    styles = [s for _, s in seen]
    assert len(styles) == 40 and 10 < styles.count("groove") < 30
    first = list(seen)
    seen.clear()
    for current in range(40):
        assert np.array_equal(syn.one(current)["image"], outs[current]["image"])
    assert seen == first
    with pytest.raises(ConfigError, match="scratch_styles"):
        load_config("tiny", ["train.data.scratch_styles=[etched]"])


def test_fold_banks_are_fit_without_their_own_fold(tiny_dataset, tmp_path):
    """Cross-fitting (``train.data.expert_folds``): bank f is fit on exactly the images
    outside fold f (the images it will draw are unseen by it); a second call reuses them."""
    from training.expert_banks import KEY_FILE, _key, fit_fold_banks

    folds = 4
    cfg = data_cfg(tiny_dataset, tmp_path, **{"data.expert_folds": folds})
    sources = list_sources(tiny_dataset, ("stripes",), (), folds)
    banks = fit_fold_banks(cfg, sources, tmp_path / "banks")
    assert sorted(banks) == [("stripes", f) for f in range(folds)]
    for f in range(folds):
        outside = [s.path for s in sources if s.fold != f]
        assert 0 < len(outside) < len(sources)
        fit = json.loads((Path(banks[("stripes", f)]) / KEY_FILE).read_text())
        assert fit == {"key": _key(cfg, outside), "images": len(outside)}

    stamp = {f: (Path(b) / KEY_FILE).stat().st_mtime_ns for f, b in banks.items()}
    assert fit_fold_banks(cfg, sources, tmp_path / "banks") == banks
    assert {f: (Path(b) / KEY_FILE).stat().st_mtime_ns for f, b in banks.items()} == stamp

    few = fit_fold_banks(cfg, sources[:3], tmp_path / "few")  # fewer images than folds
    assert sorted(few) == [("stripes", f) for f in range(3)]  # no bank for the empty fold
