"""Request content as model inputs: dates, pixel series and JSON bodies, checked."""

from __future__ import annotations

from datetime import date
from typing import Any

import numpy as np
import pytest

from service.errors import InvalidInput
from service.pipeline.inputs import (
    MAX_DATES_TEXT,
    image_from_json,
    parse_dates,
    pixel_series,
    series_from_json,
    validate_json,
)
from service.runtime.manifest import Manifest

DATES = ["2024-04-03", "2024-05-20"]


def _series(dates: int = 2, bands: int = 10) -> list[list[float]]:
    return [[1000.0 + 10 * c + t for c in range(bands)] for t in range(dates)]


@pytest.mark.parametrize(
    "text", ["2024-04-03,2024-05-20", " 2024-04-03 , 2024-05-20, ", '["2024-04-03","2024-05-20"]']
)
def test_dates_come_as_a_list_or_comma_separated(text: str) -> None:
    assert parse_dates(text) == [date(2024, 4, 3), date(2024, 5, 20)]
    assert parse_dates(DATES) == [date(2024, 4, 3), date(2024, 5, 20)]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("2024-04-31", "use ISO dates"),
        ("[" * 100_000, "not a valid JSON list"),
        ('[["2024-04-03"]]', "expected a list of ISO dates"),
        ("[1, 2]", "expected a list of ISO dates"),
        ("2024-04-03," * (MAX_DATES_TEXT // 11 + 1), "over 128 KiB"),
    ],
)
def test_bad_dates_are_refused_by_name(text: str, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        parse_dates(text)


def test_pixel_series_keep_pixels_with_data_on_some_date() -> None:
    cube = np.arange(2 * 3 * 2 * 2, dtype=np.float32).reshape(2, 3, 2, 2)
    valid = np.array([[[True, False], [False, False]], [[True, True], [False, False]]])
    series, series_valid, pixels = pixel_series(cube, valid)
    assert pixels.tolist() == [[True, True], [False, False]]
    assert series.shape == (2, 2, 3)
    np.testing.assert_array_equal(series[1, 0], cube[0, :, 0, 1])
    np.testing.assert_array_equal(series[1, 1], cube[1, :, 0, 1])
    assert series_valid.tolist() == [[True, True], [False, True]]


@pytest.mark.parametrize(
    ("body", "where"),
    [
        ({"model": "crops", "parcels": [{"series": _series()}]}, "body"),
        ({"model": "crops", "image": [[[1.0]]], "parcels": [{"series": _series()}]}, "body"),
        ({"model": "crops", "dates": DATES, "parcels": [{"series": _series()}], "x": 1}, "x"),
        ({"model": "crops", "days": [1e39], "parcels": [{"series": _series(1)}]}, "days"),
        ({"model": "", "image": [[[1.0]]]}, "model"),
    ],
)
def test_a_bad_json_body_names_the_field(body: dict[str, Any], where: str) -> None:
    with pytest.raises(InvalidInput) as refused:
        validate_json(body)
    assert refused.value.message.startswith(f"{where}:")
    assert refused.value.detail["errors"]


def test_parcels_become_series_with_ids_days_and_validity(crops: Manifest) -> None:
    req = validate_json(
        {
            "model": "crops",
            "dates": DATES,
            "parcels": [
                {"id": "field-7", "series": _series()},
                {"series": _series(), "valid": [False, True]},
            ],
        }
    )
    series = series_from_json(req, crops, max_items=10)
    assert series.ids == ["field-7", "1"]
    assert series.dates == DATES
    assert series.series.shape == (2, 2, 10)
    assert series.valid.tolist() == [[True, True], [False, True]]
    assert series.days.shape == (2,)
    assert series.pixels is None


@pytest.mark.parametrize(
    ("parcels", "message"),
    [
        ([{"series": _series(3)}], r"parcels.0.series must be 2 dates x 10 bands"),
        ([{"series": _series(2, 9)}], r"parcels.0.series must be 2 dates x 10 bands"),
        ([{"series": _series(), "valid": [True]}], "must have 2 entries"),
        ([{"series": _series(), "valid": [False, False]}], "has no valid date"),
        ([{"series": _series()}] * 3, "3 parcels; at most 2"),
    ],
)
def test_parcels_that_do_not_fit_the_model_are_refused(
    crops: Manifest, parcels: list[dict[str, Any]], message: str
) -> None:
    req = validate_json({"model": "crops", "dates": DATES, "parcels": parcels})
    with pytest.raises(InvalidInput, match=message):
        series_from_json(req, crops, max_items=2)


def test_a_json_image_is_bounded_and_checked(footprints: Manifest) -> None:
    pixels = np.random.default_rng(0).integers(0, 200, (3, 4, 4)).astype(float)
    image = image_from_json(validate_json({"model": "f", "image": pixels.tolist()}), footprints, 16)
    np.testing.assert_array_equal(image.data, pixels.astype(np.float32))
    assert image.georef is None
    with pytest.raises(InvalidInput, match="more than 15 pixels"):
        image_from_json(validate_json({"model": "f", "image": pixels.tolist()}), footprints, 15)
    ragged = validate_json({"model": "f", "image": [[[1.0, 2.0], [3.0]]]})
    with pytest.raises(InvalidInput, match=r"\(bands, height, width\)"):
        image_from_json(ragged, footprints, 16)
