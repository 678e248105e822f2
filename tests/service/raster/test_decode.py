"""Opening uploads: real files, broken files and files that are not what they claim."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from service.errors import InvalidRaster, PayloadTooLarge
from service.raster.decode import RasterLimits, read_geotiff
from service.raster.encode import encode_geotiff
from tests.helpers.geotiff import geotiff

LIMITS = RasterLimits(max_pixels=4096 * 4096, max_bands=64, max_bytes=2**30)


def test_real_cog_keeps_its_georeference(shared_data: Path) -> None:
    raster = read_geotiff((shared_data / "cogeo.tif").read_bytes(), LIMITS)
    with rasterio.open(shared_data / "cogeo.tif") as src:
        assert raster.info.georef.transform == tuple(src.transform)[:6]
        assert raster.info.georef.to_json()["crs"] == "EPSG:3857"
    assert raster.data.shape == (3, 1024, 1024)


def test_nodata_border_becomes_invalid(shared_data: Path) -> None:
    raster = read_geotiff((shared_data / "RGB.byte.tif").read_bytes(), LIMITS)
    assert raster.valid is not None
    assert 0.5 < raster.valid.mean() < 0.9
    assert not raster.valid[0, 0]
    assert (raster.data[:, ~raster.valid] == 0).all()


def test_nan_pixels_are_invalid(shared_data: Path) -> None:
    raster = read_geotiff((shared_data / "float_nan.tif").read_bytes(), LIMITS)
    assert raster.valid is not None
    assert not raster.valid.all()
    assert np.isnan(raster.data[0][~raster.valid]).all()


def test_corrupt_tiles_give_a_read_error(shared_data: Path) -> None:
    with pytest.raises(InvalidRaster, match="could not be read"):
        read_geotiff((shared_data / "corrupt.tif").read_bytes(), LIMITS)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 100, "not a GeoTIFF"),
        (
            b'<VRTDataset rasterXSize="1"><SourceFilename>/etc/passwd</SourceFilename>',
            "not a GeoTIFF",
        ),
        (b"II*\x00" + b"\x00" * 10, "could not be opened"),
    ],
)
def test_non_geotiffs_are_refused(data: bytes, message: str) -> None:
    with pytest.raises(InvalidRaster, match=message):
        read_geotiff(data, LIMITS)


def test_truncated_geotiff_is_refused(shared_data: Path) -> None:
    data = (shared_data / "cogeo.tif").read_bytes()
    with pytest.raises(InvalidRaster):
        read_geotiff(data[: len(data) // 3], LIMITS)


def test_huge_declared_size_is_refused_before_reading() -> None:
    data = geotiff(
        shape=(3, 100_000, 100_000),
        crs="EPSG:3857",
        transform=from_origin(1000, 2000, 1, 1),
        tiled=True,
        compress="deflate",
        SPARSE_OK=True,
    )
    assert len(data) < 5_000_000
    with pytest.raises(PayloadTooLarge, match="100000x100000"):
        read_geotiff(data, LIMITS)


def test_encoded_geotiff_round_trips() -> None:
    from service.raster.georef import Georeference

    georef = Georeference(
        rasterio.crs.CRS.from_epsg(32631).to_wkt(),
        tuple(from_origin(500000, 4e6, 10, 10))[:6],
        40,
        30,
    )
    bands = np.random.default_rng(0).random((2, 30, 40), dtype=np.float32)
    bands[0, 0, 0] = np.nan
    data = encode_geotiff(bands, georef, ["a", "b"])
    raster = read_geotiff(data, LIMITS)
    assert raster.info.georef == georef
    assert raster.info.descriptions == ["a", "b"]
    np.testing.assert_array_equal(raster.data[1], bands[1])
