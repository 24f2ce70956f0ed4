"""`myriad evaluate lmm`: metric definitions and the command end to end (tiny preset)."""

from __future__ import annotations

import json

import pytest

from cluster.cli import main
from training.evaluate_lmm import summarize


def row(anomalous, truth, said, positions=(), parsed=True, expert=False, score=1.0):
    return {"anomalous": anomalous, "truth_positions": truth, "expert_anomalous": expert,
            "expert_score": score,
            "verdict": {"anomalous": said if parsed else None, "positions": list(positions),
                        "parsed": parsed}}


def test_summarize_definitions():
    rows = [
        row(False, None, False, score=0.1),                              # right
        row(False, None, True, ["top"], expert=True, score=0.9),         # wrong yes
        row(True, ["top", "center"], True, ["top", "center"], expert=True, score=2.0),  # exact
        row(True, ["top", "center"], True, ["top"], score=0.5),          # yes, hit, not exact
        row(True, ["left"], False, score=0.4),                           # said no
        row(True, ["left"], None, parsed=False, expert=True, score=3.0),  # unparseable
    ]
    s = summarize(rows, 1.0, 1.0, [])
    assert s["answer_accuracy"] == pytest.approx(3 / 6)
    assert s["position_images"] == 4
    assert s["position_accuracy"] == pytest.approx(1 / 4)
    assert s["position_hit_rate"] == pytest.approx(2 / 4)
    assert s["unparseable_rate"] == pytest.approx(1 / 6)
    assert s["expert_accuracy"] == pytest.approx(3 / 6)


def test_evaluate_lmm_command(tiny_cfg, tiny_dataset, tiny_bank, tmp_path, capsys):
    from actors.modeling.checkpoint import save_model_dir
    from actors.modeling.myriad import build_myriad

    model_dir = save_model_dir(build_myriad(tiny_cfg.model), tmp_path / "model")
    out = tmp_path / "eval.json"
    rc = main(["evaluate", "lmm", "--config", "tiny", "--model", str(model_dir), "--data",
               str(tiny_dataset), "--category", "stripes", "--bank", str(tiny_bank), "--json", str(out)])
    assert rc == 0
    result = json.loads(out.read_text())
    for key in ("answer_accuracy", "position_accuracy", "unparseable_rate", "expert_accuracy"):
        assert key in result and key in result["per_category"]["stripes"]
    per = result["per_category"]["stripes"]
    assert per["images"] == 8 and per["position_images"] == 4
    rows = per["per_image"]
    # the expert alone: its thresholded scores against the labels
    want = sum((r["expert_score"] > per["expert_threshold"]) == r["anomalous"] for r in rows) / 8
    assert per["expert_accuracy"] == pytest.approx(want)
    assert "answer_accuracy" in capsys.readouterr().out
    # no bank: the expert is fit from train/good
    rc = main(["evaluate", "lmm", "--config", "tiny", "--model", str(model_dir), "--data",
               str(tiny_dataset), "--category", "stripes"])
    assert rc == 0


def test_evaluate_lmm_user_errors(tiny_dataset, tmp_path, capsys):
    rc = main(["evaluate", "lmm", "--config", "tiny", "--model", str(tmp_path / "none"), "--data",
               str(tiny_dataset), "--category", "stripes"])
    assert rc == 2 and "not a trained model directory" in capsys.readouterr().err
