"""Map tiles as the tests read them: pixels of a PNG or WEBP, and the tile over a place."""

from __future__ import annotations

import warnings

import morecantile
import numpy as np
import rasterio
from rasterio.errors import NotGeoreferencedWarning

WEB_MERCATOR = morecantile.tms.get("WebMercatorQuad")


def rgba(image: bytes) -> np.ndarray:
    """A PNG or WEBP tile's pixels, ``(4, height, width)`` uint8."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.MemoryFile(image) as mem, mem.open() as ds:
            return np.asarray(ds.read())


def tile_at(lon: float, lat: float, z: int) -> tuple[int, int, int]:
    """``(z, x, y)`` of the Web Mercator tile holding a longitude and latitude."""
    tile = WEB_MERCATOR.tile(lon, lat, z)
    return int(tile.z), int(tile.x), int(tile.y)


def tile_bounds(z: int, x: int, y: int) -> tuple[float, float, float, float]:
    """A tile's ``(left, bottom, right, top)`` in EPSG:3857 metres."""
    b = WEB_MERCATOR.xy_bounds(x, y, z)
    return float(b.left), float(b.bottom), float(b.right), float(b.top)
