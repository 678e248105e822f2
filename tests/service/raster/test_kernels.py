"""Separable kernels: weights by cover, and nodata kept out of every weighted sum."""

from __future__ import annotations

import numpy as np

from service.raster.kernels import axis_kernel, finite_mask, resample_masked


def test_average_kernel_weighs_by_cover() -> None:
    idx, w = axis_kernel(3, 2, "average")
    dense = np.zeros((2, 3))
    for k in range(idx.shape[1]):
        np.add.at(dense, (np.arange(2), idx[:, k]), w[:, k])
    np.testing.assert_allclose(dense, [[2 / 3, 1 / 3, 0], [0, 1 / 3, 2 / 3]], atol=1e-6)


def test_bilinear_kernel_weights_sum_to_one_and_stay_in_bounds() -> None:
    for n_in, n_out in ((5, 12), (12, 5), (7, 7)):
        idx, w = axis_kernel(n_in, n_out, "bilinear")
        assert idx.shape == w.shape == (n_out, 2)
        assert idx.min() >= 0
        assert idx.max() < n_in
        np.testing.assert_allclose(w.sum(axis=1), 1.0, atol=1e-6)


def test_nodata_stays_out_of_the_sum_and_weight_says_how_much_was_valid() -> None:
    values = np.array([[[2.0, 4.0, 100.0, 6.0]]], dtype=np.float32)
    valid = np.array([[True, True, False, True]])
    rows = axis_kernel(1, 1, "average")
    cols = axis_kernel(4, 2, "average")
    out, weight = resample_masked(values, valid, rows, cols)
    np.testing.assert_allclose(out[0, 0], [3.0, 6.0])
    assert weight is not None
    np.testing.assert_allclose(weight[0], [1.0, 0.5])
    # No valid pixel under an output pixel: NaN, not a zero.
    out, weight = resample_masked(values, np.zeros((1, 4), bool), rows, cols)
    assert np.isnan(out).all()
    assert weight is not None
    assert not weight.any()


def test_all_valid_input_needs_no_weight() -> None:
    values = np.arange(16, dtype=np.uint16).reshape(1, 4, 4)
    out, weight = resample_masked(
        values, None, axis_kernel(4, 2, "average"), axis_kernel(4, 2, "average")
    )
    assert weight is None
    assert out.dtype == np.float32
    np.testing.assert_allclose(out[0], [[2.5, 4.5], [10.5, 12.5]])


def test_finite_mask_marks_nan_in_any_band() -> None:
    values = np.ones((2, 2, 2), np.float32)
    assert finite_mask(values) is None
    assert finite_mask(values.astype(np.uint8)) is None
    values[1, 0, 1] = np.nan
    mask = finite_mask(values)
    assert mask is not None
    np.testing.assert_array_equal(mask, [[True, False], [True, True]])
