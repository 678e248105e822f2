"""Requests by reference: fields and JSON bodies, and STAC assets matched to a model's bands."""

from __future__ import annotations

from datetime import date
from typing import Any

import pytest

from service.errors import InvalidInput
from service.pipeline.intake import UploadOptions
from service.pipeline.references import References
from service.pipeline.stac_inputs import ReferenceQuery

RGB = ["red", "green", "blue"]
NOWHERE = References([], 1, 1)  # inline documents are never fetched


def _item(assets: dict[str, Any], day: str = "2024-04-01T10:00:00Z") -> dict[str, Any]:
    return {"type": "Feature", "properties": {"datetime": day}, "assets": assets}


def _resolve(stac: Any, bands: list[str] = RGB, assets: Any = None) -> list[list[str]]:
    query = ReferenceQuery._make([], stac, assets)
    assert query is not None
    inputs, _ = query.resolve(NOWHERE, bands, UploadOptions())
    return inputs


def test_json_body_fields_become_form_fields() -> None:
    query, fields = ReferenceQuery.from_json(
        {
            "model": "crops",
            "href": ["s3://b/1.tif", "s3://b/2.tif"],
            "dates": ["2024-01-01", "2024-02-01"],
            "async": True,
            "tile_size": 512,
        }
    )
    assert query is not None
    assert query.hrefs == ["s3://b/1.tif", "s3://b/2.tif"]
    options = UploadOptions.from_fields(fields)
    assert options.dates == [date(2024, 1, 1), date(2024, 2, 1)]
    assert options.run_async
    assert options.tile_size == 512


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"model": "m", "href": "s3://b/a.tif", "stac": "s3://b/i.json"}, "not both"),
        ({"model": "m", "href": [1, 2]}, "href: a URL or a list"),
        ({"model": "m", "stac": 5}, "stac: a URL"),
        ({"model": "m", "stac": "s3://b/i.json", "assets": []}, "assets"),
        ({"model": "m", "href": "s3://b/a.tif", "tile_size": {"a": 1}}, "tile_size"),
        ({"model": "m", "href": "s3://b/a.tif", "parcels": []}, "unknown fields: parcels"),
    ],
)
def test_bad_bodies_name_the_field(body: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        ReferenceQuery.from_json(body)


def test_form_fields_with_inline_stac() -> None:
    query = ReferenceQuery.from_fields(
        [], {"stac": '{"type": "Feature"}', "assets": "red, green,blue"}
    )
    assert query is not None
    assert query.stac == {"type": "Feature"}
    assert query.assets == RGB
    assert ReferenceQuery.from_fields([], {"model": "m"}) is None
    with pytest.raises(InvalidInput, match="stac: not valid JSON"):
        ReferenceQuery.from_fields([], {"stac": "{oops"})


def test_assets_matched_by_band_names() -> None:
    visual = {"href": "https://h/v.tif", "eo:bands": [{"common_name": b} for b in RGB]}
    per_band = {b: {"href": f"https://h/{b}.tif", "bands": [{"name": b}]} for b in reversed(RGB)}
    assert _resolve(_item({"visual": visual, **per_band})) == [["https://h/v.tif"]]
    # Without an asset holding all three, one file per band in the model's order.
    assert _resolve(_item(per_band)) == [[f"https://h/{b}.tif" for b in RGB]]
    # Named by the request, in its order.
    assert _resolve(_item({"visual": visual, **per_band}), assets=["blue", "red"]) == [
        ["https://h/blue.tif", "https://h/red.tif"]
    ]
    # No band metadata at all: visual is the RGB asset by convention.
    assert _resolve(_item({"visual": {"href": "https://h/v.tif"}})) == [["https://h/v.tif"]]


def test_assets_that_do_not_fit_are_refused() -> None:
    nir = {"href": "https://h/n.tif", "eo:bands": [{"common_name": "nir"}, {"name": "red"}]}
    with pytest.raises(InvalidInput, match="no asset or assets hold the model's bands"):
        _resolve(_item({"nir": nir}))
    with pytest.raises(InvalidInput, match="asset nir holds bands nir, red"):
        _resolve(_item({"nir": nir}), assets=["nir"])
    with pytest.raises(InvalidInput, match="no asset swir; the item has nir"):
        _resolve(_item({"nir": nir}), assets=["swir"])
    with pytest.raises(InvalidInput, match="must be absolute"):
        _resolve(_item({"visual": {"href": "v.tif"}}))
    with pytest.raises(InvalidInput, match="expected a STAC Item"):
        _resolve({"type": "Catalog"})


def test_item_collection_is_a_series_in_date_order() -> None:
    bands = ["B2", "B3"]
    items = [
        _item(
            {"data": {"href": f"s3://b/{d}.tif", "bands": [{"name": "b2"}, {"name": "B3"}]}},
            f"{d}T10:00:00Z",
        )
        for d in ("2024-05-01", "2024-03-01", "2024-04-01")
    ]
    query = ReferenceQuery._make([], {"type": "FeatureCollection", "features": items}, None)
    assert query is not None
    inputs, options = query.resolve(NOWHERE, bands, UploadOptions())
    assert inputs == [
        ["s3://b/2024-03-01.tif"],
        ["s3://b/2024-04-01.tif"],
        ["s3://b/2024-05-01.tif"],
    ]
    assert options.dates == [date(2024, 3, 1), date(2024, 4, 1), date(2024, 5, 1)]
    del items[0]["properties"]["datetime"]
    with pytest.raises(InvalidInput, match="needs a datetime"):
        query.resolve(NOWHERE, bands, UploadOptions())
