"""The TPG gate's starting thresholds fit to training maps (``training.gate_fit``)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from actors.modeling.grid import GRID_LABELS
from configs import load_config
from training.gate_fit import A_GRID, S_GRID, T_GRID, cell_rule, fit_gate


def _maps(rng: np.random.Generator, n: int, peak: float) -> tuple[np.ndarray, list[list[str]]]:
    """(n, 48, 48) maps at 0.3 with one hot 10x10 square of value ``peak`` in a random cell
    (every other map stays normal), and each map's true positions."""
    maps = np.full((n, 48, 48), 0.3, np.float32) + rng.uniform(0, 0.02, (n, 48, 48)).astype(np.float32)
    positions: list[list[str]] = []
    for i in range(n):
        if i % 2:
            positions.append([])
            continue
        cell = int(rng.integers(9))
        y, x = 16 * (cell // 3) + 3, 16 * (cell % 3) + 3
        maps[i, y:y + 10, x:x + 10] = peak
        positions.append([GRID_LABELS[cell]])
    return maps, positions


def test_cell_rule_names_the_hot_cell_only():
    m = torch.full((1, 1, 48, 48), 0.2)
    m[0, 0, 2:12, 2:12] = 0.9  # most of the excess: top left
    m[0, 0, 14:17, 2:12] = 0.55  # a faint rim; its last row, in the left cell, holds ~1% of
    named = cell_rule(m, 0.5, 0.1, 0.45)[0]  # the mass over the base 0.515
    assert named.tolist() == [i == 0 for i in range(9)]
    assert cell_rule(m, 0.5, 0.005, 0.45)[0, 3]  # a 0.5% rule names the rim's cell too
    assert not cell_rule(m, 0.95, 0.01, 0.45).any()  # a peak under t names nothing


def test_fit_finds_thresholds_below_a_weak_defect():
    """Defects peak at 0.42, under the default t = 0.5: the default rule names nothing and is
    right only on the normal half; the fit moves t under the peak and gets every sample."""
    maps, positions = _maps(np.random.default_rng(0), 64, peak=0.42)
    t, s, a, acc = fit_gate(maps, positions)
    assert t < 0.42 and t in T_GRID and s in S_GRID and a in A_GRID
    assert acc == 1.0
    x = torch.as_tensor(maps)[:, None]
    truth = np.array([[g in p for g in GRID_LABELS] for p in positions])
    assert (cell_rule(x, 0.5, 0.1, 0.45).numpy() == truth).all(axis=1).mean() == 0.5


def test_fit_keeps_the_default_when_it_is_already_best():
    maps, positions = _maps(np.random.default_rng(1), 32, peak=0.9)
    assert fit_gate(maps, positions)[:3] == (0.5, 0.1, 0.45)  # ties go to the starting triple


def test_fit_rejects_bad_inputs():
    with pytest.raises(ValueError, match="as many maps"):
        fit_gate(np.zeros((2, 8, 8), np.float32), [[]])
    with pytest.raises(ValueError, match="3x3"):
        fit_gate(np.zeros((1, 8, 8), np.float32), [[]], grid=4)


def test_config_thresholds_reach_the_tpg():
    from actors.modeling.tpg import TextualPromptGenerator

    cfg = load_config("tiny", ["model.tpg.gate_threshold=0.4", "model.tpg.share_threshold=0.2",
                               "model.tpg.share_base=0.3"])
    tpg = TextualPromptGenerator(cfg.model.tpg, 16)
    assert tpg.gate_threshold.item() == pytest.approx(0.4) and tpg.share_threshold.item() == pytest.approx(0.2)
    assert tpg.share_base.item() == pytest.approx(0.3)
    with pytest.raises(ValueError, match="model.tpg.share_base"):
        load_config("tiny", ["model.tpg.share_base=1.0"])


def test_trainer_fits_the_gate_once_per_run(ray_cluster, tiny_dataset, tmp_path):
    """The driver's fit runs on its own samples through the real pipeline, lands in the config
    the workers build from, and is read back (not refit) when the run resumes."""
    from training.data import prepare, tokenizer_dir
    from training.trainer import fit_gate_thresholds

    cfg = load_config("tiny", [f"train.data.root={tiny_dataset}", "train.data.categories=[stripes]",
                               f"train.storage_dir={tmp_path / 'train'}", "train.data.fit_gate=true",
                               "train.data.fit_gate_samples=16"])
    sources, banks = prepare(cfg)
    run_dir = tmp_path / "train" / "run"
    fitted = fit_gate_thresholds(cfg, sources, banks, tokenizer_dir(cfg), run_dir)
    record = json.loads((run_dir / "gate_fit.json").read_text())
    assert record["samples"] == 16 and 0.0 <= record["rule_exact"] <= 1.0
    assert fitted.model.tpg.gate_threshold == record["gate_threshold"] in T_GRID
    assert fitted.model.tpg.share_threshold == record["share_threshold"] in S_GRID
    assert fitted.model.tpg.share_base == record["share_base"] in A_GRID
    assert load_config(fitted.model_dump(mode="json")).model.tpg == fitted.model.tpg  # workers' view
    record["gate_threshold"] = 0.625  # a resumed run reads the file: no second fit
    (run_dir / "gate_fit.json").write_text(json.dumps(record))
    assert fit_gate_thresholds(cfg, sources, banks, None, run_dir).model.tpg.gate_threshold == 0.625
