"""GeoTIFF encoding of outputs: georeference, band descriptions, nodata, tags and layout."""

from __future__ import annotations

import numpy as np
import pytest
from rasterio.crs import CRS
from rasterio.io import MemoryFile
from rasterio.transform import from_origin

from service.raster.encode import encode_geotiff
from service.raster.georef import Georeference

UTM = CRS.from_epsg(32631).to_wkt()


def _georef(width: int, height: int, crs: str | None = UTM) -> Georeference:
    return Georeference(crs, tuple(from_origin(500000, 4e6, 0.5, 0.5))[:6], width, height)


def test_float_bands_keep_georeference_descriptions_and_nan_nodata() -> None:
    bands = np.random.default_rng(0).random((2, 30, 40), dtype=np.float32)
    bands[1, 0, 0] = np.nan
    data = encode_geotiff(
        bands,
        _georef(40, 30),
        ["probability", "gate_1"],
        tags={"MODEL": "footprints:2.2.0"},
        band_tags=[{"KIND": "prediction"}, {"KIND": "attention"}],
    )
    with MemoryFile(data) as mem, mem.open() as ds:
        assert ds.crs == CRS.from_epsg(32631)
        assert ds.transform == from_origin(500000, 4e6, 0.5, 0.5)
        assert ds.descriptions == ("probability", "gate_1")
        assert np.isnan(ds.nodata)
        assert ds.tags()["MODEL"] == "footprints:2.2.0"
        assert ds.tags(2)["KIND"] == "attention"
        assert ds.profile["compress"] == "deflate"
        assert not ds.profile.get("tiled", False)  # small: striped
        np.testing.assert_array_equal(ds.read(), bands)


def test_large_integer_rasters_are_tiled_without_nodata_unless_given() -> None:
    bands = np.arange(300 * 260, dtype=np.uint8).reshape(1, 300, 260)
    with MemoryFile(encode_geotiff(bands, _georef(260, 300), ["class"])) as mem, mem.open() as ds:
        assert ds.nodata is None
        assert ds.profile["tiled"]
        assert ds.block_shapes[0] == (256, 256)
        np.testing.assert_array_equal(ds.read(1), bands[0])
    data = encode_geotiff(bands, _georef(260, 300, crs=None), ["class"], nodata=255)
    with MemoryFile(data) as mem, mem.open() as ds:
        assert ds.nodata == 255
        assert ds.crs is None


def test_shapes_that_do_not_fit_are_refused() -> None:
    bands = np.zeros((2, 30, 40), np.float32)
    with pytest.raises(ValueError, match="one description per band"):
        encode_geotiff(bands, _georef(40, 30), ["only one"])
    with pytest.raises(ValueError, match="bands are 40x30 but the georeference is 30x40"):
        encode_geotiff(bands, _georef(30, 40), ["a", "b"])
