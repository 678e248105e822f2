"""Unflagged synthetic clouds for any band set: bright reflectance, flat indices."""

from __future__ import annotations

import numpy as np

from models.data.crop_clouds import inject_clouds, is_index_band, value_scale, with_clouds
from models.data.crops import CropSeries

BANDS = ("MIR", "BLUE", "NIR", "RED", "EVI", "NDVI")
# A dense green canopy, x 10000: dark in the visible, bright NIR, high indices.
CANOPY = np.array([1200.0, 250.0, 4500.0, 300.0, 6000.0, 8500.0], dtype=np.float32)


def _canopy(n: int, t: int) -> tuple[np.ndarray, np.ndarray]:
    series = np.broadcast_to(CANOPY, (n, t, len(CANOPY))).copy()
    valid = np.ones((n, t), dtype=bool)
    valid[:, -3:] = False  # padding
    return series, valid


def test_index_bands_are_told_from_reflectance_bands() -> None:
    assert [is_index_band(b) for b in BANDS] == [False] * 4 + [True] * 2
    assert is_index_band("ndwi")
    assert is_index_band("EVI2")
    assert not any(is_index_band(b) for b in ("B2", "B8A", "SWIR1", "green"))


def test_clouds_brighten_reflectance_and_flatten_indices_on_valid_dates_only() -> None:
    series, valid = _canopy(400, 20)
    out, cloudy = inject_clouds(series, valid, BANDS, np.random.default_rng(0), 0.3, 10000.0)
    assert not (cloudy & ~valid).any()
    assert 0.25 < cloudy.sum() / valid.sum() < 0.35
    np.testing.assert_array_equal(out[~cloudy], series[~cloudy])
    clouds = out[cloudy]
    # Visible and infrared reflectance rise towards 0.3-0.7 ...
    assert (clouds[:, 1] > 1500).all()
    assert (clouds[:, 3] > 1500).all()
    assert np.median(clouds[:, 1]) > 3000
    # ... while NDVI and EVI fall towards 0.
    assert (clouds[:, 5] < 0.5 * CANOPY[5]).all()
    assert np.median(clouds[:, 5]) < 0.3 * CANOPY[5]
    assert out.dtype == np.float32
    np.testing.assert_array_equal(series, _canopy(400, 20)[0])  # input untouched


def test_values_in_0_1_units_get_clouds_on_that_scale() -> None:
    series, valid = _canopy(50, 10)
    series /= 10000.0
    assert value_scale(series, valid) == 1.0
    out, cloudy = inject_clouds(series, valid, BANDS, np.random.default_rng(1), 0.5, 1.0)
    assert out[cloudy][:, 1].max() < 1.0


def test_with_clouds_records_where_they_are_and_keeps_them_valid() -> None:
    series, valid = _canopy(30, 8)
    data = CropSeries(
        series=series,
        days=np.zeros((30, 8), dtype=np.float32),
        valid=valid,
        labels=np.zeros(30, dtype=np.int64),
        class_names=("soy",),
        bands=BANDS,
    )
    a, b = with_clouds(data, 5, 0.2), with_clouds(data, 5, 0.2)
    assert a.cloudy is not None
    assert a.cloudy.any()
    np.testing.assert_array_equal(a.series, b.series)
    np.testing.assert_array_equal(a.valid, data.valid)
