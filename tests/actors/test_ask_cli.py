"""`myriad ask` end to end on the tiny preset (real tiny model, real tiny PatchCore bank)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from cluster.cli import main


@pytest.fixture(scope="module")
def image_path(tmp_path_factory):
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("ask") / "part.png"
    Image.fromarray(rng.integers(0, 255, (80, 100, 3), dtype=np.uint8)).save(path)
    return path


def test_ask_without_bank_says_the_map_is_zero(image_path, capsys):
    rc = main(["ask", "--preset", "tiny", "--image", str(image_path), "--question",
               "Is the left edge scratched?", "--max-new-tokens", "6"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "answer:" in out and "verdict:" in out
    assert "no --bank given, the anomaly map is all zeros" in out


def test_ask_with_bank_uses_the_expert_map(image_path, tiny_bank, capsys):
    rc = main(["ask", "--preset", "tiny", "--image", str(image_path), "--bank", str(tiny_bank),
               "--max-new-tokens", "4", "--json"])
    result = json.loads(capsys.readouterr().out)
    assert rc == 0
    assert result["map"].startswith("expert bank")
    assert result["expert"]["score"] > 0 and result["expert"]["threshold"] > 0
    assert set(result["verdict"]) == {"anomalous", "positions", "parsed", "reason"}


def test_expert_map_is_normalised_and_at_image_size(image_path, tiny_bank, tiny_cfg):
    from actors.modeling.preprocess import decode_image
    from cluster.cmd_ask import expert_map

    image = decode_image(image_path)
    amap, info = expert_map(tiny_bank, image, tiny_cfg)
    assert amap.shape == image.shape[:2] and amap.dtype == np.float32
    assert 0.0 <= amap.min() and amap.max() <= 1.0


def test_ask_bad_input_is_one_line_exit_2(tmp_path, image_path, capsys):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    assert main(["ask", "--preset", "tiny", "--image", str(bad)]) == 2
    assert "not an image" in capsys.readouterr().err
    assert main(["ask", "--model", str(tmp_path), "--image", str(image_path)]) == 2
    assert "not a Myriad model directory" in capsys.readouterr().err
