"""Georeferences: JSON round trip, and a file's own georeference set aside where unusable."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
from rasterio.crs import CRS
from rasterio.io import MemoryFile
from rasterio.transform import Affine, from_origin

from service.raster.georef import IDENTITY, Georeference, usable_georeference

UTM31 = CRS.from_epsg(32631)
LOCAL_CS = (
    'LOCAL_CS["arbitrary",LOCAL_DATUM["x",32767],UNIT["metre",1],AXIS["X",EAST],AXIS["Y",NORTH]]'
)


def _usable(crs: CRS | str | None, transform: Affine) -> Georeference:
    """usable_georeference of a 20 x 10 GeoTIFF written with this CRS and transform."""
    profile = {"driver": "GTiff", "width": 20, "height": 10, "count": 1, "dtype": "uint8"}
    with MemoryFile() as mem:
        with mem.open(**profile, crs=crs, transform=transform) as dst:
            dst.write(np.zeros((1, 10, 20), np.uint8))
        with rasterio.open(mem.name) as ds:
            return usable_georeference(ds)


def test_json_names_an_epsg_code_and_round_trips() -> None:
    georef = Georeference(UTM31.to_wkt(), (0.5, 0.0, 500000.0, 0.0, -0.5, 4e6), 20, 10)
    body = georef.to_json()
    assert body == {
        "crs": "EPSG:32631",
        "transform": [0.5, 0.0, 500000.0, 0.0, -0.5, 4e6],
        "width": 20,
        "height": 10,
    }
    back = Georeference.from_json(body)
    assert CRS.from_wkt(back.crs or "") == UTM31
    assert back.transform == georef.transform
    assert (back.width, back.height) == (20, 10)


def test_a_usable_georeference_is_kept_without_warning() -> None:
    georef = _usable(UTM31, from_origin(500000, 4000000, 0.5, 0.5))
    assert georef.crs is not None
    assert CRS.from_wkt(georef.crs) == UTM31
    assert georef.transform == (0.5, 0.0, 500000.0, 0.0, -0.5, 4000000.0)
    assert georef.warnings == ()


def test_no_crs_keeps_the_transform_without_warning() -> None:
    georef = _usable(None, from_origin(10, 20, 2, 2))
    assert georef.crs is None
    assert georef.transform == (2.0, 0.0, 10.0, 0.0, -2.0, 20.0)
    assert georef.warnings == ()


@pytest.mark.parametrize(
    ("crs", "transform", "reason"),
    [
        (UTM31, Affine(1e-12, 0, 500000, 0, -1e-12, 4e6), "pixel size"),
        (UTM31, Affine(1, 0, 5e9, 0, -1, 4e6), "coordinates beyond"),
        (UTM31, Affine(1, 1, 500000, 1, 1, 4e6), "parallel"),
        (LOCAL_CS, from_origin(100, 200, 1, 1), "not tied to the Earth"),
    ],
    ids=["tiny-pixels", "far-away", "parallel-axes", "local-cs"],
)
def test_an_unusable_georeference_is_set_aside_with_the_reason(
    crs: CRS | str, transform: Affine, reason: str
) -> None:
    georef = _usable(crs, transform)
    assert georef.crs is None
    assert len(georef.warnings) == 1
    assert reason in georef.warnings[0]
    assert "served as not georeferenced" in georef.warnings[0]
    if "CRS" not in georef.warnings[0]:
        assert georef.transform == IDENTITY
