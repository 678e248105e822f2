"""Holding crop samples out by location: whole blocks, never a place on both sides."""

from __future__ import annotations

import numpy as np
import pytest

from models.data.crop_split import spatial_blocks, split_at_random, split_by_location
from models.data.crops import CropSeries


def _data(lonlat: np.ndarray, labels: np.ndarray) -> CropSeries:
    n = len(labels)
    return CropSeries(
        series=np.zeros((n, 3, 1), dtype=np.float32),
        days=np.zeros((n, 3), dtype=np.float32),
        valid=np.ones((n, 3), dtype=bool),
        labels=labels,
        class_names=tuple(f"c{k}" for k in range(int(labels.max()) + 1)),
        bands=("NDVI",),
        lonlat=lonlat,
    )


def _scattered(n: int, seed: int) -> CropSeries:
    rng = np.random.default_rng(seed)
    lonlat = np.column_stack([rng.uniform(-60, -52, n), rng.uniform(-17, -9, n)])
    return _data(lonlat, rng.integers(0, 3, n))


def test_blocks_are_grid_cells() -> None:
    lonlat = np.array([[-55.1, -12.1], [-55.4, -12.4], [-54.9, -12.1], [-55.1, -11.9]])
    blocks = spatial_blocks(lonlat, 0.5)
    assert blocks[0] == blocks[1]
    assert len({int(blocks[0]), int(blocks[2]), int(blocks[3])}) == 3


def test_no_block_is_on_both_sides_and_about_the_fraction_is_held_out() -> None:
    data = _scattered(2000, seed=1)
    split = split_by_location(data, 0.2, 0.5, seed=3)
    assert data.lonlat is not None
    blocks = spatial_blocks(data.lonlat, 0.5)
    assert not set(blocks[split.train]) & set(blocks[split.test])
    assert sorted([*split.train, *split.test]) == list(range(2000))
    assert 0.2 <= len(split.test) / 2000 <= 0.25
    again = split_by_location(data, 0.2, 0.5, seed=3)
    np.testing.assert_array_equal(again.test, split.test)
    other = split_by_location(data, 0.2, 0.5, seed=4)
    assert set(other.test) != set(split.test)


def test_a_class_found_in_one_block_only_stays_in_training() -> None:
    data = _scattered(600, seed=2)
    labels = data.labels.copy()
    assert data.lonlat is not None
    lonlat = data.lonlat.copy()
    lonlat[:40] = [-55.01, -12.01]  # 40 samples of a new class, all in one spot
    labels[:40] = 3
    data = _data(lonlat, labels)
    for seed in range(10):
        split = split_by_location(data, 0.5, 1.0, seed)
        assert not np.isin(np.arange(40), split.test).any()
        assert "no held-out samples of c3" in split.description


def test_location_needs_lonlat_and_more_than_one_block() -> None:
    data = _scattered(50, seed=0)
    no_place = _data(np.zeros((50, 2)), data.labels)
    with pytest.raises(ValueError, match=r"one 0\.5 degree block"):
        split_by_location(no_place, 0.2, 0.5, 0)
    nowhere = CropSeries(
        series=data.series,
        days=data.days,
        valid=data.valid,
        labels=data.labels,
        class_names=data.class_names,
    )
    with pytest.raises(ValueError, match="needs lonlat"):
        split_by_location(nowhere, 0.2, 0.5, 0)


def test_random_split_holds_out_the_fraction() -> None:
    split = split_at_random(_scattered(150, seed=0), 0.2, seed=0)
    assert len(split.test) == 30
    assert not set(split.train) & set(split.test)
