"""`ray job submit --working-dir . -- python -m training --config configs/train/tiny.yaml`
against a `ray start --head` cluster this test starts and stops (only its own processes)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_cluster(temp_dir: str) -> None:
    """Stop only the processes of the cluster whose session lives under ``temp_dir``."""
    mine = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        try:
            if any(temp_dir in part for part in (p.info["cmdline"] or [])):
                mine.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    for p in mine:
        for child in p.children(recursive=True):
            if child not in mine:
                mine.append(child)
    for p in mine:
        try:
            p.send_signal(signal.SIGTERM)
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(mine, timeout=15)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass


def test_ray_job_submit_trains_and_exports(tiny_dataset, tmp_path):
    temp_dir = tempfile.mkdtemp(prefix="rayjob-", dir="/tmp")  # short: Ray's socket paths
    # Every port of its own: the suite's session cluster (conftest) already holds Ray's default
    # agent ports (52365 ...), and a head whose dashboard agent cannot bind never takes jobs
    # ("No available agent to submit job").
    gcs, dash, agent_http, agent_grpc, env_agent, metrics = (free_port() for _ in range(6))
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "PATH": f"{BIN}:{os.environ['PATH']}",
           "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    out = tmp_path / "job"
    try:
        subprocess.run(
            [str(BIN / "ray"), "start", "--head", f"--port={gcs}", "--num-cpus=4",
             f"--dashboard-port={dash}", "--dashboard-host=127.0.0.1", "--include-dashboard=true",
             f"--dashboard-agent-listen-port={agent_http}", f"--dashboard-agent-grpc-port={agent_grpc}",
             f"--runtime-env-agent-port={env_agent}", f"--metrics-export-port={metrics}",
             f"--temp-dir={temp_dir}", "--disable-usage-stats"],
            env=env, check=True, capture_output=True, timeout=120)
        runtime_env = {"env_vars": {"MYRIAD_HOME": str(REPO / ".myriad"), "HF_HUB_OFFLINE": "1",
                                    "OMP_NUM_THREADS": "1"}}
        cmd = [str(BIN / "ray"), "job", "submit", f"--address=http://127.0.0.1:{dash}",
               "--working-dir", ".", f"--runtime-env-json={json.dumps(runtime_env)}", "--",
               "python", "-m", "training", "--config", "configs/train/tiny.yaml",
               "--set", f"train.data.root={tiny_dataset}", "--set", "train.data.categories=[stripes]",
               "--set", f"train.storage_dir={out / 'runs'}", "--set", f"train.export_dir={out / 'model'}",
               "--set", "train.max_steps=2", "--set", "train.data.eval_samples=0",
               "--json", str(out / "summary.json")]
        t0 = time.time()
        while True:  # the head's job agent registers a few seconds after `ray start` returns
            proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=420)
            if "No available agent" not in proc.stdout + proc.stderr or time.time() - t0 > 120:
                break
            time.sleep(3)
        tail = (proc.stdout + proc.stderr)[-3000:]
        assert proc.returncode == 0, tail
        assert "succeeded" in proc.stdout.lower(), tail
        summary = json.loads((out / "summary.json").read_text())
        assert summary["metrics"]["step"] == 2, summary
        assert (out / "model" / "model.safetensors").is_file()
        assert time.time() - t0 < 420
    finally:
        stop_cluster(temp_dir)

    from actors.modeling.checkpoint import load_model_dir

    model = load_model_dir(out / "model")
    assert model.config.llm.vocab_size == 128
