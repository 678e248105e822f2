"""Synthetic crop series: seeded, irregular, padded, cloudy and class-distinct."""

from __future__ import annotations

import numpy as np
import pytest

from models.data.crops import BANDS, CLASS_NAMES, CropSeries, make_crop_series


@pytest.fixture(scope="module")
def data() -> CropSeries:
    return make_crop_series(1200, seed=11)


def _ndvi(data: CropSeries) -> np.ndarray:
    red, nir = data.series[..., BANDS.index("B4")], data.series[..., BANDS.index("B8")]
    return (nir - red) / np.maximum(nir + red, 1.0)


def test_same_seed_gives_same_data_and_another_seed_differs() -> None:
    a, b = make_crop_series(50, seed=3), make_crop_series(50, seed=3)
    c = make_crop_series(50, seed=4)
    np.testing.assert_array_equal(a.series, b.series)
    np.testing.assert_array_equal(a.valid, b.valid)
    assert not np.array_equal(a.series, c.series)


def test_arrays_have_documented_shapes_and_dtypes(data: CropSeries) -> None:
    n, t = len(data), 40
    assert data.series.shape == (n, t, len(BANDS))
    assert data.series.dtype == np.float32
    assert data.days.shape == (n, t)
    assert data.days.dtype == np.float32
    assert data.valid.dtype == np.bool_
    assert data.cloudy is not None
    assert data.cloudy.shape == (n, t)
    assert data.labels.dtype == np.int64
    assert set(np.unique(data.labels)) == set(range(len(CLASS_NAMES)))
    assert len(CLASS_NAMES) >= 5


def test_dates_are_irregular_variable_in_number_and_padded(data: CropSeries) -> None:
    counts = (data.series.any(axis=2)).sum(axis=1)
    assert counts.min() >= 12
    assert counts.max() <= 40
    assert len(np.unique(counts)) > 10
    for i in range(20):
        days = data.days[i, : counts[i]]
        assert np.all(np.diff(days) >= 0)
        assert len(np.unique(np.diff(days))) > 2  # not a regular revisit
        assert not data.valid[i, counts[i] :].any()
        assert not data.series[i, counts[i] :].any()
    assert data.days.max() > 365  # seasons may run into the next year
    assert data.valid.any(axis=1).all()


def test_clouds_are_bright_and_only_some_are_flagged(data: CropSeries) -> None:
    assert data.cloudy is not None
    present = data.series.any(axis=2)
    clear = present & ~data.cloudy
    flagged = data.cloudy & ~data.valid
    hidden = data.cloudy & data.valid
    assert 0.2 < data.cloudy[present].mean() < 0.4
    assert flagged.sum() > 0.3 * data.cloudy.sum()
    assert hidden.sum() > 0.3 * data.cloudy.sum()
    blue = data.series[..., BANDS.index("B2")]
    assert np.median(blue[data.cloudy]) > 3 * np.median(blue[clear])
    # Clear dates never look like clouds: no clear date is flagged invalid.
    assert data.valid[clear].all()


def test_reflectance_is_plausible_and_ndvi_follows_each_class_phenology(
    data: CropSeries,
) -> None:
    assert data.cloudy is not None
    clear = data.series.any(axis=2) & ~data.cloudy
    values = data.series[clear]
    assert values.min() >= 0
    assert values.max() <= 10000
    ndvi = _ndvi(data)
    assert ndvi[clear].min() > -0.2
    assert ndvi[clear].max() < 0.95

    def peak_day(name: str) -> float:
        rows = data.labels == CLASS_NAMES.index(name)
        mask = clear & rows[:, None]
        bins = np.arange(0, 400, 20)
        which = np.digitize(data.days[mask], bins)
        means = [ndvi[mask][which == b].mean() for b in range(1, len(bins))]
        return float(bins[int(np.argmax(means))])

    # Winter crops green up months before summer crops.
    assert peak_day("winter_cereal") + 40 < peak_day("maize")
    assert peak_day("rapeseed") + 40 < peak_day("sunflower")


def test_subset_keeps_arrays_aligned(data: CropSeries) -> None:
    part = data.subset(np.array([5, 2]))
    np.testing.assert_array_equal(part.series[1], data.series[2])
    assert part.cloudy is not None
    assert data.cloudy is not None
    np.testing.assert_array_equal(part.cloudy[0], data.cloudy[5])
    assert part.labels.tolist() == [data.labels[5], data.labels[2]]


def test_impossible_date_counts_are_refused() -> None:
    with pytest.raises(ValueError, match="min_dates"):
        make_crop_series(3, seed=0, min_dates=10, max_dates=5)
