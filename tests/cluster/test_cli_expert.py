"""The expert commands end to end on the tiny preset, bad input included."""

import json
import subprocess
import sys

import pytest
from PIL import Image

from cluster.cli import main


def test_fit_predict_evaluate(tiny_dataset, tmp_path, capsys):
    bank = tmp_path / "bank"
    assert main(["expert", "fit", "--config", "tiny", "--data", str(tiny_dataset), "--category", "stripes", "--out", str(bank)]) == 0
    assert (bank / "bank.json").is_file() and (bank / "index.faiss").is_file()

    good = sorted((tiny_dataset / "stripes" / "test" / "good").glob("*.png"))[0]
    bad = sorted((tiny_dataset / "stripes" / "test" / "blob").glob("*.png"))[0]
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n")
    out = tmp_path / "pred"
    assert main(["expert", "predict", "--config", "tiny", "--bank", str(bank), str(good), str(bad), str(broken), "--out", str(out)]) == 0
    scores = json.loads((out / "scores.json").read_text())
    by_name = {r["path"]: r for r in scores["results"]}
    assert by_name[str(bad)]["score"] > by_name[str(good)]["score"]
    assert by_name[str(bad)]["anomalous"] is True
    assert scores["failed"][0]["path"] == str(broken)
    overlay = Image.open(by_name[str(bad)]["overlay"])
    assert overlay.size[0] == 2 * overlay.size[1]

    report = tmp_path / "m.json"
    assert main(["expert", "evaluate", "--config", "tiny", "--data", str(tiny_dataset), "--category", "stripes", "--bank", str(bank), "--json", str(report)]) == 0
    metrics = json.loads(report.read_text())
    for key in ("image_auroc", "pixel_auroc", "pro", "fit_seconds", "images_per_second"):
        assert key in metrics
    assert metrics["image_auroc"] == 1.0 and metrics["fit_seconds"] is None

    # without --bank it fits first and reports the fit time
    assert main(["expert", "evaluate", "--config", "tiny", "--data", str(tiny_dataset), "--category", "stripes", "--json", str(report)]) == 0
    assert json.loads(report.read_text())["fit_seconds"] > 0


def _run(*args):
    return subprocess.run([sys.executable, "-m", "cluster", *args], capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize(
    "args, message",
    [
        (["expert", "fit", "--config", "tiny", "--data", "/nonexistent", "--category", "x", "--out", "/tmp/b"], "does not exist"),
        (["expert", "predict", "--config", "tiny", "--bank", "/nonexistent", "a.png", "--out", "/tmp/o"], "not a memory bank"),
        (["expert", "fit", "--config", "tiny", "--set", "expert.coreset_ratio=3", "--data", ".", "--category", "x", "--out", "/tmp/b"], "expert.coreset_ratio"),
    ],
)
def test_errors_are_one_line_and_exit_2(args, message):
    proc = _run(*args)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr


def test_empty_train_and_incompatible_bank(tiny_dataset, tiny_bank, tmp_path):
    (tmp_path / "c" / "train" / "good").mkdir(parents=True)
    proc = _run("expert", "fit", "--config", "tiny", "--data", str(tmp_path), "--category", "c", "--out", str(tmp_path / "b"))
    assert proc.returncode == 2 and "no images" in proc.stderr and "Traceback" not in proc.stderr
    img = sorted((tiny_dataset / "stripes" / "test" / "good").glob("*.png"))[0]
    proc = _run("expert", "predict", "--config", "tiny", "--set", "expert.image_size=96", "--bank", str(tiny_bank), str(img), "--out", str(tmp_path / "o"))
    assert proc.returncode == 2 and "expert.image_size: bank 64, config 96" in proc.stderr
    proc = _run("expert", "predict", "--config", "tiny", "--bank", str(tiny_bank), str(tmp_path / "missing.png"), "--out", str(tmp_path / "o"))
    assert proc.returncode == 2 and "no input image could be read" in proc.stderr
