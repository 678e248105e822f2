"""GeoTIFFs built in memory for the hardening tests."""

from __future__ import annotations

import io

import numpy as np
import rasterio
from rasterio.transform import Affine, from_origin

UTM = "EPSG:32631"


def geotiff(
    bands: int = 3,
    size: int = 64,
    dtype: str = "uint8",
    crs: str | None = UTM,
    transform: Affine | None = None,
    data: np.ndarray | None = None,
    **profile: object,
) -> bytes:
    """A GeoTIFF of seeded random values (or ``data``)."""
    if data is None:
        rng = np.random.default_rng(0)
        data = rng.integers(0, 200, (bands, size, size)).astype(dtype)
    buf = io.BytesIO()
    with rasterio.open(
        buf,
        "w",
        driver="GTiff",
        width=size,
        height=size,
        count=bands,
        dtype=dtype,
        crs=crs,
        transform=transform or from_origin(500000, 4000000, 0.5, 0.5),
        **profile,
    ) as dst:
        dst.write(data)
    return buf.getvalue()
