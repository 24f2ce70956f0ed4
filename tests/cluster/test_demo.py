"""`myriad demo --quick` (what `make demo` runs, on the tiny preset) end to end in its own
process: experts fitted for two lines, the Serve application, the embedded broker, consumers,
cameras; then the report, the verdicts Parquet, the summary, and no process left behind."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").is_file() and Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


def _ray_processes_of(driver_pid: int) -> list[str]:
    """Processes of the Ray session the driver started (its session dir ends in the driver pid)."""
    tag = re.compile(rf"session_[0-9_\-]+_{driver_pid}(/|\b)")
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if tag.search(cmd):
                found.append(f"{proc.name}: {cmd[:120]}")
    return found


def test_quick_demo_end_to_end(tmp_path):
    import pyarrow.parquet as pq

    out = tmp_path / "demo"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "RAY_USAGE_STATS_ENABLED": "0"}
    t0 = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "cluster", "demo", "--quick", "--seconds", "8", "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    text, _ = proc.communicate(timeout=600)
    seconds = time.monotonic() - t0
    assert proc.returncode == 0, text[-4000:]
    print(f"\nquick demo: {seconds:.0f}s")

    # The live summary ran, per line, and the cameras' frames all got verdicts.
    for line in ("brick", "gravel"):
        assert re.search(rf"\[final\]\s+{line}: sent\s+\d+\s+verdicts", text), text[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    sent = sum(s["stream"]["frames sent"] for s in summary["lines"].values())
    assert sent >= 10
    for line, s in summary["lines"].items():
        assert s["stream"]["verdicts"] == s["stream"]["frames sent"], (line, s)
        assert s["stream"]["DLQ"] == 0 and s["stream"]["lag at end"] == 0
        assert 0.0 <= s["expert_evaluation"]["image_auroc"] <= 1.0
    # The verdicts Parquet: one row per frame, both lines.
    table = pq.read_table(out / "verdicts.parquet")
    assert table.num_rows == sent and set(table.column("line").to_pylist()) == {"brick", "gravel"}
    # The report: NG frames' overlays with the LMM's answer (or why it was shed).
    report = (out / "report.html").read_text()
    most = sum(min(s["stream"]["NG"], 8) for s in summary["lines"].values())  # --figures 8 per line
    assert 1 <= report.count("<figure>") <= most  # one per NG source image
    assert "data:image/png;base64," in report and "LMM" in report and "expert evaluation" in report

    # Nothing left behind: the broker and the demo's Ray session are gone.
    brokers = [int(p) for p in re.findall(r"embedded Kafka broker \(tansu\) on \S+, pid (\d+)", text)]
    assert brokers, text[-3000:]
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and (any(_alive(p) for p in brokers) or _ray_processes_of(proc.pid)):
        time.sleep(0.5)
    assert not any(_alive(p) for p in brokers)
    assert _ray_processes_of(proc.pid) == []


def test_demo_refuses_an_outdated_model_directory_before_any_work(tmp_path):
    """A model directory of an older format stops the demo at once, naming it (exit 2)."""
    model = tmp_path / "old-model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    (model / "manifest.json").write_text(json.dumps({"format_version": 1, "kind": "myriad"}))
    out = tmp_path / "demo"
    env = {**os.environ, "MYRIAD_HOME": str(tmp_path / "home"), "RAY_USAGE_STATS_ENABLED": "0"}
    proc = subprocess.run([sys.executable, "-m", "cluster", "demo", "--model", str(model), "--out", str(out)],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert f"{model}: model directory format 1, this release reads" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not out.exists() and not (tmp_path / "home").exists()  # no weights, data or banks
