"""Footprints GeoJSON as GeoPackage and FlatGeobuf: opened by OGR, same polygons and attributes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio.crs

from service.errors import InvalidInput
from service.raster.footprints import FootprintOptions, extract_footprints
from service.raster.vectors import VECTOR_FORMATS, encode, vector_format
from tests.helpers.geotiff import ORIGIN, UTM
from tests.helpers.vectors import open_vector, same_as_geojson

DRIVERS = {"gpkg": "GPKG", "fgb": "FlatGeobuf"}


def _collection(crs: str | None, native: bool = False) -> dict[str, Any]:
    """Two classes' regions of a class map with one attention layer, as the server makes them."""
    classes = np.zeros((64, 64), np.float32)
    classes[10:30, 10:40] = 2
    classes[40:50, :] = np.nan
    gate = np.linspace(0, 1, 64 * 64, dtype=np.float32).reshape(64, 64)
    gate[:5] = np.nan  # a region whose attention mean is still made of the rest
    layers = {"class": classes, "gate_1": gate}

    def read(name: str, rows: slice, cols: slice) -> np.ndarray:
        return layers[name][rows, cols]

    return extract_footprints(
        [(0, classes)], 64, 64, tuple(ORIGIN)[:6], crs, read, "class", ["gate_1"],
        FootprintOptions(native_crs=native), classes=["water", "forest", "built"],
    )  # fmt: skip


@pytest.mark.parametrize("name", ["gpkg", "fgb"])
@pytest.mark.parametrize(("native", "crs"), [(False, "EPSG:4326"), (True, UTM)])
def test_a_download_opens_with_ogr_and_holds_the_geojsons_features(
    tmp_path: Path, name: str, native: bool, crs: str
) -> None:
    collection = _collection(rasterio.crs.CRS.from_string(UTM).to_wkt(), native)
    assert len(collection["features"]) == 3
    data = encode(json.dumps(collection).encode(), VECTOR_FORMATS[name])
    opened = open_vector(data, tmp_path / f"footprints.{name}")
    assert opened["driver"] == DRIVERS[name]
    assert opened["layer"] == "footprints"
    assert opened["crs"] == crs
    same_as_geojson(opened, collection)
    assert opened["fields"]["value"].dtype == np.int64
    assert opened["fields"]["area_m2"].dtype == np.float64
    assert opened["indexed"]


@pytest.mark.parametrize("name", ["gpkg", "fgb"])
def test_a_job_without_a_georeference_has_no_crs_and_pixel_coordinates(
    tmp_path: Path, name: str
) -> None:
    collection = _collection(None)
    data = encode(json.dumps(collection).encode(), VECTOR_FORMATS[name])
    opened = open_vector(data, tmp_path / f"footprints.{name}")
    assert opened["crs"] is None
    same_as_geojson(opened, collection)


@pytest.mark.parametrize("name", ["gpkg", "fgb"])
def test_no_polygons_is_an_empty_layer(tmp_path: Path, name: str) -> None:
    empty = {"type": "FeatureCollection", "features": []}
    data = encode(json.dumps(empty).encode(), VECTOR_FORMATS[name])
    opened = open_vector(data, tmp_path / f"footprints.{name}")
    assert opened["polygons"] == []
    assert opened["crs"] == "EPSG:4326"


def test_geojson_is_answered_as_made() -> None:
    assert encode(b'{"features": []}', VECTOR_FORMATS["geojson"]) == b'{"features": []}'


def test_the_format_comes_from_the_query_then_the_accept_header() -> None:
    assert vector_format("GPKG", None).media_type == "application/geopackage+sqlite3"
    assert vector_format("fgb", "application/geopackage+sqlite3").name == "fgb"
    assert vector_format(None, "application/vnd.flatgeobuf, */*").name == "fgb"
    assert vector_format(None, "application/geopackage+sqlite3;q=1").name == "gpkg"
    assert vector_format(None, "text/html,*/*").name == "geojson"
    assert vector_format(None, None).name == "geojson"
    with pytest.raises(InvalidInput, match="format must be one of geojson, gpkg, fgb, not 'shp'"):
        vector_format("shp", None)
