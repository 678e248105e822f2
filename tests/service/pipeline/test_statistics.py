"""Layer statistics in every answer: min, max, mean and valid fraction, ignoring NaN."""

from __future__ import annotations

import numpy as np
import pytest

from service.pipeline.statistics import statistics


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
