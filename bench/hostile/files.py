"""Hostile inputs: small files and bodies that ask the server for a lot.

Every builder is seeded and deterministic, and writes with rasterio (GDAL's
GTiff driver), so the server reads the same kind of file a client would send.
"""

from __future__ import annotations

import json
import math

import numpy as np
from affine import Affine
from rasterio.crs import CRS
from rasterio.enums import ColorInterp

from tests.helpers.bodies import parcels, v2_binary, v2_gzip_zeros
from tests.helpers.geotiff import geotiff


def noise(size: int, bands: int = 3, seed: int = 0) -> np.ndarray:
    """Seeded uint8 noise ``(bands, size, size)``."""
    return np.random.default_rng(seed).integers(0, 256, (bands, size, size), dtype=np.uint8)


def zstd_zeros(size: int, bands: int = 3, block: int = 512) -> bytes:
    """A ``size`` x ``size`` uint8 image of zeros (valid data: no nodata), zstd tiles."""
    data = np.zeros((bands, size, size), np.uint8)
    return geotiff(
        data, tiled=True, blockxsize=block, blockysize=block, compress="zstd", zstd_level=22
    )


def sparse_scene(size: int, nodata: float | None) -> bytes:
    """A ``size`` x ``size`` x 3 uint8 GeoTIFF with no tile written (a few KB).

    GDAL reads missing tiles as the nodata value, or 0: with ``nodata=None``
    every pixel is a valid 0; with ``nodata=0`` every pixel is nodata.
    """
    return geotiff(
        shape=(3, size, size),
        dtype="uint8",
        nodata=nodata,
        tiled=True,
        blockxsize=512,
        blockysize=512,
        sparse_ok=True,
        compress="zstd",
    )


def huge_block_tiff(size: int = 64, block: int = 16384) -> bytes:
    """A ``size`` x ``size`` RGB GeoTIFF whose one internal tile is ``block`` x ``block``.

    GDAL decodes a whole tile to read any pixel of it: 768 MiB for 64 x 64
    pixels. The tile holds noise where the image is (so it is written, not left
    sparse) and zeros elsewhere; zstd packs it into some 25 KB.
    """
    return geotiff(
        noise(size, seed=5),
        tiled=True,
        blockxsize=block,
        blockysize=block,
        compress="zstd",
        zstd_level=22,
    )


def float64_stack(size: int = 512, bands: int = 500, value: float = 1500.0) -> bytes:
    """A ``bands``-band float64 stack of one constant reflectance (x 10000), deflate."""
    data = np.full((bands, size, size), value, np.float64)
    return geotiff(data, tiled=True, blockxsize=512, blockysize=512, compress="zstd", zstd_level=22)


def rgba(size: int = 64) -> bytes:
    """An RGB GeoTIFF with an alpha fourth band; the alpha hides the left quarter."""
    data = np.concatenate([noise(size), np.full((1, size, size), 255, np.uint8)])
    data[3, :, : size // 4] = 0
    colours = [ColorInterp.red, ColorInterp.green, ColorInterp.blue, ColorInterp.alpha]
    return geotiff(data, colorinterp=colours, photometric="RGB")


def odd_georef(kind: str, size: int = 64) -> bytes:
    """A small RGB upload whose georeference is legal TIFF but hostile arithmetic."""
    data = noise(size, seed=7)
    if kind == "local_cs":
        return geotiff(data, crs=CRS.from_wkt('LOCAL_CS["local",UNIT["metre",1]]'))
    if kind == "tmerc_k_1e-9":
        proj = "+proj=tmerc +lat_0=0 +lon_0=3 +k=1e-9 +x_0=500000 +y_0=0 +ellps=WGS84 +units=m"
        return geotiff(data, crs=CRS.from_proj4(proj))
    if kind == "pixel_1e-300":
        return geotiff(data, transform=Affine(1e-300, 0, 500000, 0, -1e-300, 4000000))
    if kind == "pixel_1e300":
        return geotiff(data, transform=Affine(1e300, 0, 0, 0, -1e300, 0))
    if kind == "nan_scale":
        return geotiff(data, transform=Affine(math.nan, 0, 500000, 0, math.nan, 4000000))
    raise ValueError(kind)


def crops_tiff(size: int = 16, dates: int = 3) -> bytes:
    """A small 10-band-per-date crops stack, reflectance x 10000."""
    rng = np.random.default_rng(3)
    return geotiff(rng.uniform(500, 4000, (10 * dates, size, size)).astype(np.float32))


def v2_gzip_image(size: int = 4096) -> tuple[bytes, dict[str, str]]:
    """A gzip /v2 binary request declaring a ``[1, 3, size, size]`` FP32 image of zeros."""
    return v2_gzip_zeros("image", [1, 3, size, size])


def v2_crops(dates: int, valid: bool = True) -> tuple[bytes, dict[str, str]]:
    """A /v2 crops request of one series of ``dates`` dates (binary tensors)."""
    series = np.full((1, dates, 10), 1500.0, np.float32).tobytes()
    days = np.arange(1, dates + 1, dtype=np.float32)[None].tobytes()
    mask = np.full((1, dates), valid, np.bool_).tobytes()
    return v2_binary(
        ("series", [1, dates, 10], "FP32", series),
        ("days", [1, dates], "FP32", days),
        ("valid", [1, dates], "BOOL", mask),
    )


def parcels_json(days: list[float]) -> bytes:
    """A /predict crops JSON body with one parcel over ``days``."""
    return json.dumps(parcels(np.full((1, len(days), 10), 1500.0), days=days)).encode()
