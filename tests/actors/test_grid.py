"""The 3x3 grid labels of the prompt template: cell rule, mask positions, point positions."""

import numpy as np
import pytest

from actors.modeling.grid import (
    GRID_LABELS,
    cell_counts,
    cell_index,
    mask_to_positions,
    position_of_point,
)


def test_labels_are_row_major():
    assert GRID_LABELS == (
        "top left", "top", "top right",
        "left", "center", "right",
        "bottom left", "bottom", "bottom right",
    )


@pytest.mark.parametrize(
    ("y", "x", "label"),
    [
        (0, 0, "top left"), (0, 299, "top right"), (299, 0, "bottom left"),
        (299, 299, "bottom right"), (150, 150, "center"), (99.9, 150, "top"),
        (100, 150, "center"), (150, 200, "right"), (150, 99, "left"), (250, 150, "bottom"),
    ],
)
def test_position_of_point(y, x, label):
    assert position_of_point(y, x, 300, 300) == label


@pytest.mark.parametrize(("y", "x"), [(-1, 0), (0, 300), (300, 5)])
def test_point_outside_image_is_rejected(y, x):
    with pytest.raises(ValueError, match="outside"):
        position_of_point(y, x, 300, 300)


def test_mask_in_one_cell():
    m = np.zeros((90, 120), bool)
    m[5:20, 90:110] = True
    assert mask_to_positions(m) == ["top right"]


def test_empty_and_full_masks():
    assert mask_to_positions(np.zeros((30, 30), bool)) == []
    assert mask_to_positions(np.ones((30, 30), np.uint8)) == list(GRID_LABELS)


def test_mask_split_between_cells_lists_both_in_grid_order():
    m = np.zeros((90, 90), bool)
    m[40:50, 50:70] = True  # 10 columns in "center" (50..59), 10 in "right" (60..69)
    assert mask_to_positions(m) == ["center", "right"]


def test_small_share_is_ignored_unless_min_fraction_is_zero():
    m = np.zeros((90, 90), bool)
    m[40:50, 30:59] = True  # 290 px in "center"
    m[40:42, 59:61] = False
    m[40:41, 60:62] = True  # 2 px in "right" (< 10%)
    assert mask_to_positions(m) == ["center"]
    assert mask_to_positions(m, min_fraction=0.0) == ["center", "right"]


def test_largest_cell_always_counts():
    m = np.eye(90, dtype=bool)  # a diagonal: a third in each diagonal cell
    assert mask_to_positions(m, min_fraction=0.5) == ["top left"]  # first of the ties
    assert mask_to_positions(m) == ["top left", "center", "bottom right"]


def test_cell_counts_sum_and_rule_match_points():
    rng = np.random.default_rng(0)
    for _ in range(50):
        h, w = (int(v) for v in rng.integers(3, 100, size=2))
        y, x = int(rng.integers(h)), int(rng.integers(w))
        m = np.zeros((h, w), bool)
        m[y, x] = True
        counts = cell_counts(m)
        assert counts.sum() == 1 and counts[cell_index(y, x, h, w)] == 1
        assert mask_to_positions(m) == [position_of_point(y, x, h, w)]


def test_bad_arguments():
    with pytest.raises(ValueError):
        mask_to_positions(np.zeros((3, 3, 3), bool))
    with pytest.raises(ValueError):
        mask_to_positions(np.zeros((3, 3), bool), min_fraction=1.5)
