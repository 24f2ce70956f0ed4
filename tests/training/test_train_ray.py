"""Ray Train + DeepSpeed (gloo) on the tiny preset, 2 workers: the loss falls, a killed worker
resumes from the latest checkpoint at the right step, a rerun resumes where the run ended,
ZeRO-1/2 losses equal torch DDP's on the same seed, and the export loads for `myriad ask`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from configs import load_config


def tiny_train_cfg(tiny_dataset, tmp_path, name, **train):
    over = [f"train.data.root={tiny_dataset}", "train.data.categories=[stripes]",
            f"train.storage_dir={tmp_path / 'runs'}", f"train.data.banks_dir={tmp_path / 'banks'}",
            f"train.export_dir={tmp_path / ('model_' + name)}", f"train.run_name={name}"]
    over += [f"train.{k}={v}" for k, v in train.items()]
    return load_config("tiny", over)


def records(cfg) -> list[dict]:
    path = Path(cfg.train.storage_dir) / cfg.train.run_name / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def losses(recs) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in recs if "loss" in r}


@pytest.fixture(scope="module")
def zero2_run(ray_cluster, tiny_dataset, tmp_path_factory):
    """ZeRO-2, 6 steps, rank 1 killed (os._exit) after step 4, between checkpoints 3 and 6."""
    from training.trainer import run_training

    tmp = tmp_path_factory.mktemp("zero2")
    cfg = tiny_train_cfg(tiny_dataset, tmp, "z2", max_steps=6, checkpoint_every=3, max_failures=1)
    summary = run_training(cfg, extra={"kill_at_step": 4, "kill_marker": str(tmp / "killed")})
    return cfg, summary


def test_loss_decreases_and_kill_resumes_at_checkpoint(zero2_run):
    cfg, summary = zero2_run
    recs = records(cfg)
    assert recs.count({"resumed_at": 3}) == 1  # the new worker group loaded checkpoint 3
    i = recs.index({"resumed_at": 3})
    assert [r["step"] for r in recs[:i] if "loss" in r] == [1, 2, 3, 4]  # then rank 1 died
    assert [r["step"] for r in recs[i:] if "loss" in r] == [4, 5, 6]  # step 4 redone from 3
    loss = losses(recs)  # the redone step 4 (same samples: the data stream restarts) overwrites
    before = {r["step"]: r["loss"] for r in recs[:i] if "loss" in r}
    assert loss[4] == pytest.approx(before[4], rel=1e-5)  # restored state = state at step 3
    assert loss[6] < loss[1] - 0.04, loss
    assert summary["metrics"]["step"] == 6
    assert Path(summary["checkpoint"]).name == "checkpoint_0000006"


def test_rerun_resumes_from_latest_checkpoint(zero2_run):
    from training.trainer import run_training

    cfg, _ = zero2_run
    more = cfg.model_copy(update={"train": cfg.train.model_copy(update={"max_steps": 8})})
    summary = run_training(more)
    assert summary["resumed_from_step"] == 6 and summary["metrics"]["step"] == 8
    recs = records(cfg)
    assert recs.count({"resumed_at": 6}) == 1
    assert [r["step"] for r in recs if "loss" in r][-2:] == [7, 8]


def test_checkpoint_of_another_model_format_is_refused(zero2_run, tmp_path):
    """A run's checkpoint records the model format it trained; a checkpoint of another format
    (another parameter layout, e.g. an older release's run of the same name) is refused on
    the driver, naming the run, before any worker tries to load it."""
    import json
    import shutil

    from actors.modeling.checkpoint import FORMAT_VERSION
    from actors.modeling.lmm_errors import CheckpointError
    from configs.train_schema import storage_dir
    from training.engine import STATE_FILE, latest_checkpoint
    from training.trainer import check_resumable, run_training

    cfg, _ = zero2_run
    run_dir = storage_dir(cfg) / cfg.train.run_name
    found = latest_checkpoint(run_dir)
    assert found[1]["model_format"] == FORMAT_VERSION
    check_resumable(found, run_dir)  # its own format: resumable
    old_dir = tmp_path / "old"
    shutil.copytree(found[0], old_dir / found[0].name)
    state = dict(found[1])
    del state["model_format"]  # written before checkpoints recorded it
    (old_dir / found[0].name / STATE_FILE).write_text(json.dumps(state))
    with pytest.raises(CheckpointError, match=r"format 4 or older; this release trains format \d+ .*train.run_name"):
        check_resumable(latest_checkpoint(old_dir), old_dir)
    older = cfg.model_copy(update={"train": cfg.train.model_copy(update={"storage_dir": str(tmp_path),
                                                                          "run_name": "old"})})
    with pytest.raises(CheckpointError, match="old"):
        run_training(older)


def test_export_loads_and_answers(zero2_run):
    import numpy as np

    from actors.modeling.checkpoint import load_model_dir

    cfg, summary = zero2_run
    model = load_model_dir(Path(summary["model_dir"]), expected=cfg.model)
    summary_file = json.loads((Path(summary["model_dir"]) / "train_summary.json").read_text())
    assert summary_file["world_size"] == 2
    img = np.full((64, 64, 3), 128, np.uint8)
    inputs = model.preprocessor([img], [np.zeros((64, 64), np.float32)])
    assert len(model.generate(inputs.pixel_values, inputs.maps, [None], 4)) == 1


def test_zero12_loss_equals_ddp(ray_cluster, tiny_dataset, tmp_path):
    from training.trainer import run_training

    curves = {}
    for name, over in {"ddp": {"strategy": "ddp"}, "zero1": {"zero_stage": 1},
                       "zero2": {"zero_stage": 2}}.items():
        cfg = tiny_train_cfg(tiny_dataset, tmp_path, name, max_steps=4, checkpoint_every=100,
                             **over, **{"data.eval_samples": 0})
        run_training(cfg, extra={"export_dir": None})
        curves[name] = losses(records(cfg))
    assert list(curves["ddp"]) == [1, 2, 3, 4]
    for name in ("zero1", "zero2"):
        for step, ref in curves["ddp"].items():
            assert curves[name][step] == pytest.approx(ref, rel=1e-5, abs=1e-6), (name, curves)
    assert curves["ddp"][4] != curves["ddp"][1]  # the parameters did change
