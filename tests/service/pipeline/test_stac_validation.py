"""Validation against the shipped schemas only: bad Items fail, other schemas are not fetched."""

from __future__ import annotations

import copy
from typing import Any

import pystac
import pytest
from pystac.errors import STACValidationError
from pystac.validation import GetSchemaError

from service.pipeline.stac import CLASSIFICATION, MLM, PROJECTION, RASTER
from service.pipeline.stac_validation import validate_item, vendored_schemas

ITEM: dict[str, Any] = {
    "type": "Feature",
    "stac_version": "1.1.0",
    "stac_extensions": [],
    "id": "job",
    "geometry": None,
    "properties": {"datetime": "2024-01-01T00:00:00Z"},
    "links": [],
    "assets": {},
}


def test_every_extension_items_name_is_shipped() -> None:
    shipped = vendored_schemas()
    for uri in (PROJECTION, RASTER, CLASSIFICATION, MLM):
        assert uri in shipped
    assert "https://schemas.stacspec.org/v1.1.0/item-spec/json-schema/item.json" in shipped
    assert pystac.get_stac_version() == "1.1.0"


def test_a_minimal_item_validates_and_a_broken_one_does_not() -> None:
    assert validate_item(copy.deepcopy(ITEM))
    broken = {**copy.deepcopy(ITEM), "stac_extensions": [MLM]}
    with pytest.raises(STACValidationError, match="mlm"):
        validate_item(broken)


def test_a_schema_that_is_not_shipped_is_an_error_not_a_download() -> None:
    unknown = {
        **copy.deepcopy(ITEM),
        "stac_extensions": ["https://example.invalid/x/v1.0.0/schema.json"],
    }
    with pytest.raises(GetSchemaError, match="not shipped"):
        validate_item(unknown)
