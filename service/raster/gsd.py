"""Ground sample distance: metres on the ground per pixel of a georeferenced raster."""

from __future__ import annotations

import math
import warnings

from rasterio.crs import CRS
from rasterio.warp import transform as warp_transform

from service.raster.georef import Georeference

# Pixels finer than 0.1 mm or coarser than 10,000 km are not ground pixels:
# such transforms (1e-300, 1e300) are treated as no georeference at all.
GSD_LIMITS_M = (1e-4, 1e7)
# WGS84 ellipsoid: metres per radian along a meridian and a parallel at a latitude.
_A = 6_378_137.0
_E2 = 6.694379990141317e-3


def _metres_per_radian(lat_rad: float) -> tuple[float, float]:
    """Meridional and prime-vertical radii of curvature (m) of WGS84 at a latitude."""
    s = 1.0 - _E2 * math.sin(lat_rad) ** 2
    return _A * (1.0 - _E2) / s**1.5, _A / math.sqrt(s)


def ground_resolution(georef: Georeference | None) -> tuple[float, float] | None:
    """Metres on the ground per pixel ``(along a row, down a column)`` at the image's centre.

    The distance between the centre pixel's two edges along each pixel axis,
    on the WGS84 ellipsoid: right for projected CRSs (including Web Mercator,
    whose nominal metres shrink by the cosine of the latitude), for geographic
    ones in degrees, for rotated or sheared transforms and non-square pixels.

    Returns:
        None where the raster has no usable georeference: no CRS, a CRS PROJ
        cannot place on the Earth (e.g. ``LOCAL_CS``), a non-finite or
        degenerate transform, or pixels outside :data:`GSD_LIMITS_M`.
    """
    if georef is None or not georef.crs:
        return None
    a, b, c, d, e, f = georef.transform
    if not all(math.isfinite(v) for v in (a, b, c, d, e, f)) or a * e - b * d == 0:
        return None
    col, row = georef.width / 2, georef.height / 2

    def at(dx: float, dy: float) -> tuple[float, float]:
        x, y = col + dx, row + dy
        return a * x + b * y + c, d * x + e * y + f

    points = [at(-0.5, 0), at(0.5, 0), at(0, -0.5), at(0, 0.5)]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            crs = CRS.from_user_input(georef.crs)
            lons, lats = warp_transform(
                crs, CRS.from_epsg(4326), [p[0] for p in points], [p[1] for p in points]
            )
    except Exception:  # PROJ and GDAL raise many kinds (CPLE_*, CRSError)
        # Whatever PROJ cannot place on the Earth is, for resampling, no georeference.
        return None
    if not all(math.isfinite(v) for v in (*lons, *lats)) or max(abs(v) for v in lats) > 90:
        return None
    meridian, parallel = _metres_per_radian(math.radians(sum(lats) / 4))
    cos_lat = math.cos(math.radians(sum(lats) / 4))

    def distance(i: int, j: int) -> float:
        dlon = (lons[j] - lons[i] + 180.0) % 360.0 - 180.0  # across the antimeridian
        east = math.radians(dlon) * parallel * cos_lat
        north = math.radians(lats[j] - lats[i]) * meridian
        return math.hypot(east, north)

    gx, gy = distance(0, 1), distance(2, 3)
    low, high = GSD_LIMITS_M
    if not (low <= gx <= high and low <= gy <= high):
        return None
    return gx, gy
