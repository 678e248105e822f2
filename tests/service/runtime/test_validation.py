"""Input checks against the shipped manifests: layout before reading, values after."""

from __future__ import annotations

import numpy as np
import pytest

from service.errors import UnsupportedRaster
from service.runtime.manifest import Manifest
from service.runtime.validation import check_layout, check_values


def test_a_fitting_layout_passes(footprints: Manifest, crops: Manifest) -> None:
    check_layout(footprints, 3, "uint8")
    check_layout(crops, 10, "float32", dates=24, limit=64)


@pytest.mark.parametrize(
    ("bands", "dtype", "message"),
    [
        (3, "complex64", r"dtype complex64 is not supported .*\(complex or non-numeric"),
        (4, "complex64", "dtype complex64"),  # the dtype is named before the band count
        (4, "uint8", "band count 4 does not match model footprints, which takes 3 bands"),
        (3, "float32", "dtype float32 is not supported .* values in 0-255"),
    ],
)
def test_layouts_the_segmentation_model_cannot_take(
    footprints: Manifest, bands: int, dtype: str, message: str
) -> None:
    with pytest.raises(UnsupportedRaster, match=message):
        check_layout(footprints, bands, dtype)


def test_dates_are_counted_per_model_and_per_server(crops: Manifest) -> None:
    with pytest.raises(UnsupportedRaster, match="band count 9 per date"):
        check_layout(crops, 9, "uint16", dates=2)
    with pytest.raises(UnsupportedRaster, match="400 dates given; model crops takes 1 to 366"):
        check_layout(crops, 10, "uint16", dates=400)
    with pytest.raises(UnsupportedRaster, match=r"at most 64 per request \(ATTNSERVE_MAX_DATES\)"):
        check_layout(crops, 10, "uint16", dates=65, limit=64)


def test_values_on_the_model_s_scale_pass_with_margins(crops: Manifest) -> None:
    # Clouds above the nominal range and small negatives after correction are real data.
    check_values(crops, np.array([-500.0, 1200.0, 15000.0], np.float32))


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (np.array([], np.float32), "no valid pixels"),
        (np.array([1.0, np.nan], np.float32), "NaN or infinite"),
        (np.array([0.02, 0.4], np.float32), "look scaled to 0-1, but model crops expects 0-10000"),
        (np.array([0.0, 1e6], np.float32), "far outside 0-10000"),
    ],
)
def test_values_on_another_scale_are_refused(
    crops: Manifest, values: np.ndarray, message: str
) -> None:
    with pytest.raises(UnsupportedRaster, match=message):
        check_values(crops, values)
