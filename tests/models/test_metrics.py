"""Pixel IoU and SpaceNet-style building F1 on hand-made masks."""

from __future__ import annotations

import numpy as np
import pytest

from models.metrics import (
    GateContrast,
    building_counts,
    footprint_scores,
    gate_contrast,
    pixel_iou,
)


def _box(mask: np.ndarray, y: int, x: int, h: int, w: int) -> np.ndarray:
    mask[y : y + h, x : x + w] = 1
    return mask


def test_pixel_iou_of_half_overlapping_squares() -> None:
    a = _box(np.zeros((10, 10), np.uint8), 0, 0, 4, 4)  # 16 px
    b = _box(np.zeros((10, 10), np.uint8), 0, 2, 4, 4)  # 16 px, 8 shared
    assert pixel_iou(a, b) == pytest.approx(8 / 24)
    assert pixel_iou(a, a) == 1.0
    assert pixel_iou(a, np.zeros_like(a)) == 0.0


def test_pixel_iou_of_two_empty_masks_is_perfect() -> None:
    empty = np.zeros((5, 5), bool)
    assert pixel_iou(empty, empty) == 1.0


def test_pixel_iou_refuses_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="shapes differ"):
        pixel_iou(np.zeros((3, 3)), np.zeros((3, 4)))


def test_building_f1_counts_matches_at_iou_half() -> None:
    truth = np.zeros((40, 40), np.uint8)
    pred = np.zeros((40, 40), np.uint8)
    # Building 1: found exactly. Building 2: prediction shifted, IoU 6/10 = 0.6 -> match.
    # Building 3: prediction covers a third of it, IoU 1/3 -> miss (and a false positive).
    # Plus one false positive far away, and building 4 missed entirely.
    _box(truth, 0, 0, 5, 5)
    _box(pred, 0, 0, 5, 5)
    _box(truth, 10, 0, 4, 4)
    _box(pred, 10, 1, 4, 4)  # overlap 4x3 = 12, union 20 -> 0.6
    _box(truth, 20, 0, 3, 9)
    _box(pred, 20, 0, 3, 3)
    _box(pred, 30, 30, 5, 5)
    _box(truth, 30, 10, 4, 4)
    counts = building_counts(pred, truth)
    assert (counts.true_positives, counts.predicted, counts.actual) == (2, 4, 4)
    assert counts.precision == pytest.approx(0.5)
    assert counts.recall == pytest.approx(0.5)
    assert counts.f1 == pytest.approx(0.5)


def test_a_prediction_merging_two_buildings_finds_one_at_most() -> None:
    # Two true buildings split by a one-pixel gap; one prediction runs over both.
    truth = np.zeros((10, 21), np.uint8)
    _box(truth, 0, 0, 10, 10)
    _box(truth, 0, 11, 10, 10)
    pred = _box(np.zeros_like(truth), 0, 0, 10, 15)
    counts = building_counts(pred, truth)
    assert counts.true_positives == 1
    assert counts.predicted == 1
    assert counts.actual == 2


def test_a_low_overlap_fragment_is_a_false_positive() -> None:
    # Two predictions overlap one building; only the good one (IoU 0.8) matches.
    truth = _box(np.zeros((12, 30), np.uint8), 0, 0, 10, 10)
    pred = np.zeros_like(truth)
    _box(pred, 0, 0, 10, 8)  # IoU 0.8
    _box(pred, 0, 9, 10, 1)  # separated by a gap column: IoU 0.1
    counts = building_counts(pred, truth)
    assert (counts.true_positives, counts.predicted, counts.actual) == (1, 2, 1)


def test_scores_pool_pixels_and_buildings_over_tiles() -> None:
    t1 = _box(np.zeros((8, 8), np.uint8), 0, 0, 4, 4)
    t2 = _box(np.zeros((8, 8), np.uint8), 4, 4, 4, 4)
    p1 = t1.copy()
    p2 = np.zeros_like(t2)
    scores = footprint_scores([p1, p2], [t1, t2])
    assert scores["pixel_iou"] == pytest.approx(16 / 32)
    assert scores["image_iou_mean"] == pytest.approx((1.0 + 0.0) / 2)
    assert scores["precision"] == 1.0
    assert scores["recall"] == 0.5
    assert scores["building_f1"] == pytest.approx(2 / 3)
    assert scores["buildings"] == 2
    assert scores["predicted_buildings"] == 1


def test_the_mean_of_tile_ious_skips_tiles_without_buildings() -> None:
    big = _box(np.zeros((20, 20), np.uint8), 0, 0, 16, 16)
    small = _box(np.zeros((20, 20), np.uint8), 0, 0, 2, 2)
    empty = np.zeros((20, 20), np.uint8)
    false = _box(np.zeros((20, 20), np.uint8), 10, 10, 2, 2)
    scores = footprint_scores([big, np.zeros_like(small), false], [big, small, empty])
    assert scores["image_iou_mean"] == pytest.approx(0.5)  # 1.0 and 0.0; the empty tile skipped
    assert scores["pixel_iou"] == pytest.approx(256 / (256 + 4 + 4))


def test_gate_contrast_at_the_masks_resolution() -> None:
    truth = _box(np.zeros((8, 8), np.uint8), 0, 0, 4, 4)
    gate = np.where(truth == 1, 0.9, 0.3)
    c = gate_contrast(gate, truth)
    assert (c.inside_n, c.outside_n) == (16, 48)
    assert c.ratio == pytest.approx(3.0)


def test_gate_contrast_of_a_coarser_gate_judges_each_cell_by_its_majority() -> None:
    truth = _box(np.zeros((8, 8), np.uint8), 0, 0, 4, 3)  # cells of column 1: half building
    gate = np.array([[0.8, 0.2, 0.2, 0.2]] * 2 + [[0.2, 0.2, 0.2, 0.2]] * 2)
    c = gate_contrast(gate, truth)  # stride 2: cells (0..1, 0..1) are at least half building
    assert c.inside_n == 4
    assert c.ratio == pytest.approx(((0.8 + 0.8 + 0.2 + 0.2) / 4) / 0.2)


def test_gate_contrasts_add_up_across_images() -> None:
    truth = _box(np.zeros((4, 4), np.uint8), 0, 0, 2, 2)
    a = gate_contrast(np.where(truth == 1, 1.0, 0.5), truth)
    b = gate_contrast(np.full((4, 4), 0.5), truth)
    total = a + b
    assert total.inside_n == 8
    assert total.ratio == pytest.approx(0.75 / 0.5)
    assert np.isnan(GateContrast().ratio)


def test_gate_contrast_refuses_a_gate_that_does_not_tile_the_mask() -> None:
    with pytest.raises(ValueError, match="integer multiple"):
        gate_contrast(np.zeros((3, 3)), np.zeros((8, 8)))
