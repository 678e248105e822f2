"""Layer statistics in every answer: min, max, mean and valid fraction, ignoring NaN."""

from __future__ import annotations

import numpy as np
import pytest

from service.pipeline.statistics import (
    class_counts,
    class_statistics,
    pixel_area_m2,
    statistics,
)


def test_finite_layer() -> None:
    a = np.array([[0.25, 0.5], [1.0, 0.0]], dtype=np.float32)
    assert statistics(a) == {"min": 0.0, "max": 1.0, "mean": 0.4375, "valid_fraction": 1.0}


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_values_are_left_out(bad: float) -> None:
    a = np.array([0.5, bad, 1.0, 0.0], dtype=np.float32)
    got = statistics(a)
    assert got == {"min": 0.0, "max": 1.0, "mean": 0.5, "valid_fraction": 0.75}


def test_nothing_valid() -> None:
    empty = {"min": None, "max": None, "mean": None, "valid_fraction": 0.0}
    assert statistics(np.full((3, 3), np.nan, dtype=np.float32)) == empty
    assert statistics(np.zeros((0, 4), dtype=np.float32)) == empty


def test_other_dtypes_match_float32() -> None:
    rng = np.random.default_rng(0)
    u8 = rng.integers(0, 255, (64, 64), dtype=np.uint8)
    assert statistics(u8) == statistics(u8.astype(np.float32))
    f16 = rng.random((64, 64)).astype(np.float16)
    got = statistics(f16)
    assert got["mean"] == pytest.approx(float(f16.astype(np.float64).mean()), abs=1e-4)
    assert got["valid_fraction"] == 1.0


def test_class_statistics_count_pixels_and_areas() -> None:
    classes = np.array([[0, 0, 2], [255, 2, 2]], dtype=np.uint8)
    counts = class_counts(classes, 3)
    assert counts.tolist() == [2, 0, 3]
    got = class_statistics(counts, ["water", "forest", "built"], 100.0)
    assert got[0] == {"class": "water", "value": 0, "pixels": 2, "fraction": 0.4, "area_m2": 200.0}
    assert got[1]["area_m2"] == 0.0
    assert "area_m2" not in class_statistics(counts, ["a", "b", "c"], None)[2]


def test_a_pixel_area_needs_a_georeference() -> None:
    utm = {"crs": "EPSG:32631", "transform": [10, 0, 500000, 0, -10, 5000000], "width": 10,
           "height": 10}  # fmt: skip
    # 10 m pixels at UTM's central meridian: 100 m² on the map, a little more on the ground.
    assert pixel_area_m2(utm) == pytest.approx(100 / 0.9996**2, rel=1e-4)
    assert pixel_area_m2({**utm, "crs": None}) is None
    assert pixel_area_m2(None) is None
