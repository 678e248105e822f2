"""Decoding GeoTIFF uploads: dates counted from headers, series from dated images."""

from __future__ import annotations

from datetime import date

import numpy as np
import pytest
from rasterio.transform import from_origin

from service.errors import InvalidInput, UnsupportedRaster
from service.pipeline.uploads import (
    date_count,
    read_open_dated,
    read_open_image,
    series_from_rasters,
)
from service.raster.decode import DecodedRaster, RasterInfo, RasterLimits, describe, open_geotiff
from service.runtime.manifest import Manifest
from tests.helpers.geotiff import geotiff, noise

LIMITS = RasterLimits(max_pixels=10**6, max_bands=512, max_bytes=2**30)
DATES = ["2024-04-03", "2024-05-20"]


def _stack(dates: int, size: int = 8, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(300, 4000, (10 * dates, size, size)).astype("uint16")


def _info(data: bytes) -> RasterInfo:
    with open_geotiff(data) as dataset:
        return describe(dataset)


def _dated(data: bytes, manifest: Manifest) -> DecodedRaster:
    with open_geotiff(data) as dataset:
        return read_open_dated(dataset, describe(dataset), manifest, LIMITS)


def test_dates_are_counted_from_the_headers(crops: Manifest) -> None:
    infos = [_info(geotiff(_stack(2))), _info(geotiff(_stack(1, seed=1)))]
    assert date_count(infos, crops, 0, 366) == 3
    assert date_count(infos, crops, 3, 366) == 3
    with pytest.raises(InvalidInput, match="2 dates given for 3 dated images"):
        date_count(infos, crops, 2, 366)
    with pytest.raises(UnsupportedRaster):
        date_count(infos, crops, 0, 2)


def test_dated_images_must_share_a_size_and_whole_dates(crops: Manifest) -> None:
    with pytest.raises(UnsupportedRaster, match="same size"):
        date_count([_info(geotiff(_stack(1))), _info(geotiff(_stack(1, 16)))], crops, 0, 366)
    odd = np.zeros((7, 8, 8), "uint16") + 500
    with pytest.raises(UnsupportedRaster):
        date_count([_info(geotiff(odd))], crops, 0, 366)


def test_series_skip_pixels_without_data_and_take_tagged_dates(crops: Manifest) -> None:
    mask = np.full((8, 8), 255, np.uint8)
    mask[0, :3] = 0  # no data on the first date there; the second date has it
    mask[7, 7] = 0
    first = geotiff(_stack(1), mask=mask, tags=[{"DATE": DATES[0]}] * 10)
    second_mask = np.full((8, 8), 255, np.uint8)
    second_mask[7, 7] = 0  # no date has data at (7, 7)
    second = geotiff(_stack(1, seed=1), mask=second_mask, tags=[{"DATE": DATES[1]}] * 10)
    series = series_from_rasters([_dated(first, crops), _dated(second, crops)], [], crops)
    assert series.dates == DATES
    assert series.pixels is not None
    assert series.pixels.sum() == 63
    assert not series.pixels[7, 7]
    assert series.series.shape == (63, 2, 10)
    assert series.valid.shape == (63, 2)
    assert not series.valid[0, 0]
    assert series.valid[0, 1]
    assert series.valid[3:].all()


def test_series_need_dates_from_the_field_or_the_tags(crops: Manifest) -> None:
    rasters = [_dated(geotiff(_stack(1)), crops), _dated(geotiff(_stack(1, seed=1)), crops)]
    given = [date.fromisoformat(d) for d in DATES]
    assert series_from_rasters(rasters, given, crops).dates == DATES
    with pytest.raises(InvalidInput, match="dates are missing"):
        series_from_rasters(rasters, [], crops)
    with pytest.raises(InvalidInput, match="1 dates given for 2"):
        series_from_rasters(rasters, given[:1], crops)


def test_dated_images_must_share_one_grid(crops: Manifest) -> None:
    moved = from_origin(600000, 4000000, 10, 10)
    rasters = [
        _dated(geotiff(_stack(1)), crops),
        _dated(geotiff(_stack(1, seed=1), transform=moved), crops),
    ]
    with pytest.raises(UnsupportedRaster, match="one CRS and transform"):
        series_from_rasters(rasters, [date.fromisoformat(d) for d in DATES], crops)


def test_an_image_is_decoded_for_its_model_or_refused(footprints: Manifest) -> None:
    data = noise(3, 16)
    with open_geotiff(geotiff(data)) as dataset:
        image = read_open_image(dataset, describe(dataset), footprints, LIMITS)
    np.testing.assert_array_equal(image.data, data)
    assert image.georef is not None
    assert image.georef.width == 16
    with (
        open_geotiff(geotiff(noise(3, 16, dtype="uint16"))) as dataset,
        pytest.raises(UnsupportedRaster),
    ):
        read_open_image(dataset, describe(dataset), footprints, LIMITS)
