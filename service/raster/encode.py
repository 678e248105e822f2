"""Writing outputs as georeferenced GeoTIFFs (tiled, deflate, every band described)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import rasterio
from affine import Affine
from rasterio.io import MemoryFile

from service.raster.georef import Georeference


def encode_geotiff(
    bands: np.ndarray,
    georef: Georeference,
    descriptions: Sequence[str],
    *,
    nodata: float | None = None,
    tags: dict[str, str] | None = None,
    band_tags: Sequence[dict[str, str]] | None = None,
) -> bytes:
    """Encode ``(N, H, W)`` bands as a GeoTIFF with the given georeference.

    Float bands use NaN as nodata unless ``nodata`` says otherwise.

    Returns:
        The GeoTIFF's bytes.
    """
    if bands.ndim != 3 or len(descriptions) != bands.shape[0]:
        raise ValueError("need (N, H, W) bands and one description per band")
    n, h, w = bands.shape
    if (h, w) != (georef.height, georef.width):
        raise ValueError(
            f"bands are {w}x{h} but the georeference is {georef.width}x{georef.height}"
        )
    if nodata is None and bands.dtype.kind == "f":
        nodata = float("nan")
    profile = {
        "driver": "GTiff",
        "width": w,
        "height": h,
        "count": n,
        "dtype": bands.dtype.name,
        "crs": rasterio.crs.CRS.from_wkt(georef.crs) if georef.crs else None,
        "transform": Affine(*georef.transform),
        "nodata": nodata,
        "compress": "deflate",
        "predictor": 3 if bands.dtype.kind == "f" else 2,
        "zlevel": 1,
        "interleave": "band",
    }
    # Small rasters are cheaper to read striped; tiles must be multiples of 16.
    if h >= 256 and w >= 256:
        profile.update(tiled=True, blockxsize=256, blockysize=256)
    with MemoryFile() as memfile:
        with memfile.open(**profile) as dst:
            dst.write(bands)
            for i, desc in enumerate(descriptions, start=1):
                dst.set_band_description(i, desc)
            if tags:
                dst.update_tags(**tags)
            for i, extra in enumerate(band_tags or [], start=1):
                dst.update_tags(i, **extra)
        return bytes(memfile.read())
