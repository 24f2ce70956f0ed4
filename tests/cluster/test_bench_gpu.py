"""`myriad bench gpu` run as its CPU dry run (gloo instead of NCCL): the same model build,
training engine, ``train_step`` and generation the GPU run uses, on the tiny preset."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest


def test_bench_gpu_dry_run_zero_stages_agree(tmp_path):
    out = tmp_path / "gpu.json"
    env = {**os.environ, "MASTER_PORT": "29561", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "cluster.bench_gpu", "--config", "tiny", "--random-weights",
         "--device", "cpu", "--stages", "1", "2", "3", "--steps", "3", "--tokens", "6",
         "--json", str(out)],
        capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    stages = result["stages"]
    assert set(stages) == {"zero1", "zero2", "zero3"}
    ref = stages["zero1"]["losses"]
    assert ref[-1] < ref[0]  # three optimizer steps on one batch: the loss falls
    for name in ("zero2", "zero3"):
        assert stages[name]["losses"] == pytest.approx(ref, abs=2e-3), name
        assert stages[name]["samples_per_s"] > 0
    assert 0 < result["parameters_trainable"] < result["parameters_total"]
    assert 1 <= result["generate"]["new_tokens"] <= 6
