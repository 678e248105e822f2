"""GeoTIFFs for tests and benchmarks, in memory or in a file, written by rasterio (GDAL)."""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.enums import ColorInterp
from rasterio.transform import from_origin
from rasterio.windows import Window

REPO = Path(__file__).resolve().parents[2]
# Real rasters nobody on this project made.
SHARED = REPO.parent / "shared" / "data" / "geotiff"
UTM = "EPSG:32631"
# 0.5 m pixels: the footprints model's resolution, so uploads run without resampling.
ORIGIN = from_origin(500000, 4000000, 0.5, 0.5)


def noise(
    bands: int = 3, size: int = 64, dtype: str = "uint8", high: int = 200, seed: int = 0
) -> np.ndarray:
    """Seeded integer values in ``[0, high)`` as ``(bands, size, size)`` of ``dtype``."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, high, (bands, size, size)).astype(dtype)


def write_geotiff(
    target: Path | BinaryIO,
    data: np.ndarray | None = None,
    *,
    shape: tuple[int, int, int] | None = None,
    dtype: Any = None,
    crs: CRS | str | None = UTM,
    transform: Affine | None = None,
    mask: np.ndarray | None = None,
    colorinterp: Sequence[ColorInterp] | None = None,
    tags: Sequence[Mapping[str, str]] | None = None,
    **profile: Any,
) -> Path | BinaryIO:
    """``data`` ``(bands, height, width)`` written by GDAL as a GeoTIFF to ``target``.

    Args:
        target: a file path, or a binary file object (``io.BytesIO``).
        data: the pixels; None writes no block at all (with ``sparse_ok=True``, a
            file of a few KB that declares ``shape``).
        shape: ``(bands, height, width)`` when there is no ``data``.
        dtype: the data type when there is no ``data`` (uint8 if None).
        crs: the CRS; None for a raster without one.
        transform: the affine transform; 0.5 m pixels of UTM 31N if None.
        mask: ``(height, width)`` uint8, an internal mask (0 hides a pixel).
        colorinterp: the bands' colour interpretations.
        tags: one dict of tags per band (``DATE`` of a dated stack).
        **profile: more creation options (``nodata``, ``tiled``, ``compress``, ...).
    """
    if data is not None:
        shape, dtype = data.shape, data.dtype  # type: ignore[assignment]
    if shape is None:
        raise ValueError("a GeoTIFF without data needs a shape")
    bands, height, width = shape
    # An internal mask, as QGIS and GDAL write it, rather than a .msk sidecar.
    with (
        rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True),
        rasterio.open(
            target,
            "w",
            driver="GTiff",
            width=width,
            height=height,
            count=bands,
            dtype=dtype or "uint8",
            crs=crs,
            transform=transform or ORIGIN,
            **profile,
        ) as dst,
    ):
        if colorinterp is not None:
            dst.colorinterp = list(colorinterp)
        if data is not None:
            dst.write(data)
        if mask is not None:
            dst.write_mask(mask)
        for band, band_tags in enumerate(tags or (), start=1):
            dst.update_tags(band, **band_tags)
    return target


def geotiff(data: np.ndarray | None = None, **options: Any) -> bytes:
    """``write_geotiff`` in memory: the GeoTIFF's bytes."""
    buf = io.BytesIO()
    write_geotiff(buf, data, **options)
    return buf.getvalue()


def read_geotiff(content: bytes) -> np.ndarray:
    """Every band of GeoTIFF bytes (an answer's body), ``(bands, height, width)``."""
    with rasterio.MemoryFile(content) as mem, mem.open() as ds:
        return np.asarray(ds.read())


def window_geotiff(source: Path, size: int, **profile: Any) -> tuple[bytes, np.ndarray]:
    """The top-left ``size`` x ``size`` window of a GeoTIFF, as GeoTIFF bytes and its pixels."""
    with rasterio.open(source) as src:
        window = Window(0, 0, size, size)
        data = src.read(window=window)
        crs, transform = src.crs, src.window_transform(window)
    return geotiff(data, crs=crs, transform=transform, **profile), data
