"""The real-texture benchmark: MVTec layout, masks, held-out test crops, determinism."""

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from actors.modeling.grid import GRID_LABELS, mask_to_positions
from training.anomaly_synthesis import DEFECT_KINDS
from training.textures import TINTS, build_textures, load_photo

SMALL = dict(crop_size=64, n_train=4, n_test_good=3, n_test_defect=10, progress=False)


def _hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _read(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))


def _expected_crop(category: str, entry: dict, size: int) -> np.ndarray:
    """Recompute a good crop from the photo and the manifest's origin / flips / tint."""
    y, x = entry["origin"]
    crop = load_photo(category)[y:y + size, x:x + size]
    if entry["flip"][0]:
        crop = crop[::-1]
    if entry["flip"][1]:
        crop = crop[:, ::-1]
    rgb = crop[..., None].astype(np.float32) * np.asarray(TINTS[category], np.float32)
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("textures") / "bench"
    summary = build_textures(out, seed=3, categories=("brick", "gravel"), **SMALL)
    return out, summary


def test_photos_are_offline_512_grayscale():
    for name in ("brick", "grass", "gravel"):
        photo = load_photo(name)
        assert photo.shape == (512, 512) and photo.dtype == np.uint8 and photo.std() > 10


def test_layout_and_counts(built):
    out, summary = built
    assert summary["categories"]["brick"] == {
        "train/good": 4, "test/good": 3, **{f"test/{k}": 2 for k in DEFECT_KINDS}}
    assert summary["n_images"] == 2 * (4 + 3 + 10)
    for cat in ("brick", "gravel"):
        assert sorted(p.name for p in (out / cat / "train/good").iterdir()) == [
            "000.png", "001.png", "002.png", "003.png"]
        assert len(list((out / cat / "test/good").glob("*.png"))) == 3
        assert sorted(p.name for p in (out / cat / "test").iterdir()) == sorted(
            ["good", *DEFECT_KINDS])
        assert sorted(p.name for p in (out / cat / "ground_truth").iterdir()) == sorted(
            DEFECT_KINDS)
        for kind in DEFECT_KINDS:
            images = sorted(p.stem for p in (out / cat / "test" / kind).glob("*.png"))
            masks = sorted(p.stem for p in (out / cat / "ground_truth" / kind).glob("*.png"))
            assert images == ["000", "001"]
            assert masks == [f"{s}_mask" for s in images]
    assert not (out / "grass").exists()


def test_images_and_masks(built):
    out, _ = built
    manifest = json.loads((out / "manifest.json").read_text())
    for cat in ("brick", "gravel"):
        entry = manifest["categories"][cat]
        assert entry["seed"] == 3 and entry["counts"]["test/hole"] == 2
        tests = [e for e in entry["images"] if e["split"] == "test" and e["kind"] != "good"]
        assert len(tests) == 10
        seen = set()
        for e in tests:
            img, mask = _read(out / e["path"]), _read(out / e["mask"])
            assert img.shape == (64, 64, 3) and img.dtype == np.uint8
            assert mask.shape == (64, 64) and mask.dtype == np.uint8
            assert set(np.unique(mask)) == {0, 255}
            assert e["mask"] == e["path"].replace("/test/", "/ground_truth/").replace(
                ".png", "_mask.png")
            assert e["positions"] == mask_to_positions(mask > 0)
            assert e["area"] == pytest.approx((mask > 0).mean(), abs=1e-6)
            # the defect is the only difference from the clean crop it was made from
            clean = _expected_crop(cat, e, 64)
            diff = np.abs(img.astype(int) - clean).max(axis=2)
            near = ndimage.binary_dilation(mask > 0, iterations=6)
            assert not diff[~near].any() and diff[mask > 0].mean() > 10
            seen.update(e["positions"])
        assert len(seen) >= 7  # centres cycle over the grid cells


def test_train_and_test_crops_are_disjoint_regions(built):
    out, _ = built
    manifest = json.loads((out / "manifest.json").read_text())
    for cat in ("brick", "gravel"):
        entry = manifest["categories"][cat]
        assert entry["split"] == {"train_rows": [0, 256], "test_rows": [256, 512]}
        for e in entry["images"]:
            y = e["origin"][0]
            if e["split"] == "train":
                assert 0 <= y and y + 64 <= 256
            else:
                assert 256 <= y and y + 64 <= 512
            if e["kind"] == "good":  # the written pixels are those rows of the photo
                assert np.array_equal(_read(out / e["path"]), _expected_crop(cat, e, 64))


def test_same_seed_same_bytes_other_seed_differs(built, tmp_path):
    out, _ = built
    again = tmp_path / "again"
    build_textures(again, seed=3, categories=("brick", "gravel"), **SMALL)
    assert _hashes(again) == _hashes(out)
    subset = tmp_path / "subset"  # each category has its own stream
    build_textures(subset, seed=3, categories=("gravel",), **SMALL)
    full = _hashes(out)
    for name, digest in _hashes(subset).items():
        if name != "manifest.json":
            assert full[name] == digest
    other = tmp_path / "other"
    build_textures(other, seed=4, categories=("brick",), **SMALL)
    other_h = _hashes(other)
    assert other_h["brick/train/good/000.png"] != full["brick/train/good/000.png"]


def test_existing_folder_keeps_other_content(tmp_path):
    out = tmp_path / "bench"
    (out / "mine").mkdir(parents=True)
    (out / "mine" / "keep.txt").write_text("user data")
    (out / "gravel" / "test" / "old_kind").mkdir(parents=True)
    (out / "gravel" / "test" / "old_kind" / "000.png").write_bytes(b"stale")
    (out / "gravel" / "notes.md").write_text("notes")
    small = dict(SMALL, n_train=1, n_test_good=1, n_test_defect=2, kinds=("hole", "stain"))
    build_textures(out, seed=0, categories=("gravel",), **small)
    build_textures(out, seed=1, categories=("brick",), **small)
    assert (out / "mine" / "keep.txt").read_text() == "user data"
    assert (out / "gravel" / "notes.md").exists()
    assert not (out / "gravel" / "test" / "old_kind").exists()
    manifest = json.loads((out / "manifest.json").read_text())
    assert sorted(manifest["categories"]) == ["brick", "gravel"]
    assert manifest["categories"]["gravel"]["seed"] == 0
    assert manifest["categories"]["brick"]["seed"] == 1
    assert sorted(p.name for p in (out / "brick" / "test").iterdir()) == ["good", "hole", "stain"]


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="crop_size"):
        build_textures(tmp_path, crop_size=300, progress=False)
    with pytest.raises(ValueError, match="unknown texture categories"):
        build_textures(tmp_path, categories=("marble",), progress=False)
    with pytest.raises(ValueError, match="unknown defect kinds"):
        build_textures(tmp_path, kinds=("smudge",), progress=False)
    assert set(GRID_LABELS)  # grid import used by the manifest positions
