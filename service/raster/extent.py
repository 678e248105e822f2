"""Where a raster lies on the Earth: its outline in EPSG:4326 and its grid in its own CRS."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import rasterio.crs
import rasterio.warp
from affine import Affine

from service.raster.gdal_env import HARDENED_GDAL
from service.raster.georef import Georeference

# Points per edge of the outline: a projected edge is a curve in longitude and latitude.
EDGE_POINTS = 21


@dataclass(frozen=True)
class Extent:
    """A georeferenced raster's outline and grid.

    Attributes:
        geometry: the outline as a GeoJSON Polygon in EPSG:4326 (longitude, latitude).
        bbox: ``[west, south, east, north]`` of the outline.
        code: ``EPSG:n`` of the CRS, None where it has no EPSG code.
        wkt2: the CRS as WKT2 (for CRSs without a code).
        native_bbox: ``[xmin, ymin, xmax, ymax]`` in the raster's CRS.
        shape: ``[height, width]``.
        transform: the affine transform's six coefficients.
        gsd_m: metres per pixel where the CRS is in metres, else None.
    """

    geometry: dict[str, Any]
    bbox: list[float]
    code: str | None
    wkt2: str
    native_bbox: list[float]
    shape: list[int]
    transform: list[float]
    gsd_m: float | None


def _outline(transform: Affine, width: int, height: int) -> list[tuple[float, float]]:
    """The raster's edge, clockwise from the top-left corner, ``EDGE_POINTS`` per side."""
    n = EDGE_POINTS - 1
    pixels = (
        [(width * i / n, 0.0) for i in range(n)]
        + [(float(width), height * i / n) for i in range(n)]
        + [(width * (n - i) / n, float(height)) for i in range(n)]
        + [(0.0, height * (n - i) / n) for i in range(n)]
    )
    return [transform * p for p in pixels]


def extent(georef: Georeference) -> Extent | None:
    """The extent of a georeferenced raster; None for one without a CRS."""
    if not georef.crs:
        return None
    crs = rasterio.crs.CRS.from_wkt(georef.crs)
    transform = Affine(*georef.transform)
    ring = _outline(transform, georef.width, georef.height)
    xs, ys = [p[0] for p in ring], [p[1] for p in ring]
    with rasterio.Env(**HARDENED_GDAL):
        lons, lats = rasterio.warp.transform(crs, "EPSG:4326", xs, ys)
        wkt2 = crs.to_wkt(version="WKT2_2019")
    coordinates = [[lon, lat] for lon, lat in zip(lons, lats, strict=True)]
    # GeoJSON's exterior rings run counter-clockwise (RFC 7946): a north-up
    # raster's edge, clockwise on the map, reversed.
    coordinates.reverse()
    coordinates.append(coordinates[0])
    epsg = crs.to_epsg()
    units = (crs.linear_units or "").lower()
    gsd = abs(transform.a) if crs.is_projected and units in ("metre", "meter", "m") else None
    return Extent(
        geometry={"type": "Polygon", "coordinates": [coordinates]},
        bbox=[min(lons), min(lats), max(lons), max(lats)],
        code=f"EPSG:{epsg}" if epsg else None,
        wkt2=wkt2,
        native_bbox=[min(xs), min(ys), max(xs), max(ys)],
        shape=[georef.height, georef.width],
        transform=list(georef.transform),
        gsd_m=gsd,
    )
