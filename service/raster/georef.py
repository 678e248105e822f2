"""Where a raster lies (CRS, transform, size), and whether a file's own georeference is usable."""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any

import rasterio
import rasterio.crs
import rasterio.warp
from rasterio.io import DatasetReader

from service.raster.gdal_env import HARDENED_GDAL

IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
# Pixel sizes outside this range (in CRS units, or pixels without a CRS) are no
# real raster's: 1e-9 degrees is 0.1 mm, 1e9 metres six Earths.
PIXEL_SIZE_RANGE = (1e-9, 1e9)
# Coordinates of a usable georeference stay within this (metres or degrees).
MAX_COORDINATE = 1e9


@dataclass(frozen=True)
class Georeference:
    """Where a raster lies: CRS (WKT, None if absent), affine transform and size.

    ``warnings`` says why a file's own georeference was set aside (unusable CRS
    or transform); the raster is then served as not georeferenced.
    """

    crs: str | None
    transform: tuple[float, float, float, float, float, float]
    width: int
    height: int
    warnings: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        """The georeference as JSON (``crs`` as an ``EPSG:`` code where one fits)."""
        crs = None
        if self.crs:
            parsed = rasterio.crs.CRS.from_wkt(self.crs)
            epsg = parsed.to_epsg()
            crs = f"EPSG:{epsg}" if epsg else self.crs
        out: dict[str, Any] = {
            "crs": crs,
            "transform": list(self.transform),
            "width": self.width,
            "height": self.height,
        }
        if self.warnings:
            out["warnings"] = list(self.warnings)
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Georeference:
        """Inverse of :meth:`to_json`."""
        crs = data.get("crs")
        wkt = rasterio.crs.CRS.from_user_input(crs).to_wkt() if crs else None
        a, b, c, d, e, f = (float(v) for v in data["transform"])
        notes = tuple(str(w) for w in data.get("warnings", ()))
        return cls(wkt, (a, b, c, d, e, f), int(data["width"]), int(data["height"]), notes)


def usable_georeference(dataset: DatasetReader) -> Georeference:
    """The dataset's georeference, or none (with the reason) where it cannot be used.

    A CRS without a link to the Earth (a local or engineering CRS), a degenerate
    projection, or a transform with non-finite, zero or absurd pixel sizes would
    break every later step that places pixels (reprojection, polygons, COGs):
    such a raster is served as not georeferenced, with a warning.
    """
    t = dataset.transform
    transform = (t.a, t.b, t.c, t.d, t.e, t.f)
    width, height = dataset.width, dataset.height
    reason = _transform_problem(transform, width, height)
    if reason:
        note = f"the raster's transform is not usable ({reason}); it is served as not georeferenced"
        return Georeference(None, IDENTITY, width, height, (note,))
    if not dataset.crs:
        return Georeference(None, transform, width, height)
    wkt = dataset.crs.to_wkt()
    problem = _crs_problem(wkt, transform, width, height)
    if problem:
        note = f"the raster's CRS is not usable ({problem}); it is served as not georeferenced"
        return Georeference(None, transform, width, height, (note,))
    return Georeference(wkt, transform, width, height)


def _transform_problem(
    transform: tuple[float, float, float, float, float, float], width: int, height: int
) -> str | None:
    if not all(math.isfinite(v) for v in transform):
        return "non-finite coefficients"
    a, b, c, d, e, f = transform
    lo, hi = PIXEL_SIZE_RANGE
    for name, size in (("x", math.hypot(a, d)), ("y", math.hypot(b, e))):
        if not lo <= size <= hi:
            return f"pixel size {size:g} in {name} is outside {lo:g} to {hi:g}"
    det = a * e - b * d
    if not math.isfinite(det) or abs(det) < lo * lo:
        return "its axes are parallel"
    corners = [(c + a * x + b * y, f + d * x + e * y) for x in (0, width) for y in (0, height)]
    if any(abs(v) > MAX_COORDINATE for xy in corners for v in xy):
        return f"coordinates beyond {MAX_COORDINATE:g}"
    return None


# Clients send many tiles of one grid, and benchmarks one tile again and again:
# the two PROJ round trips are the cost (about 2 ms), so answers are kept.
@functools.lru_cache(maxsize=1024)
def _crs_problem(
    wkt: str,
    transform: tuple[float, float, float, float, float, float],
    width: int,
    height: int,
) -> str | None:
    try:
        crs = rasterio.crs.CRS.from_wkt(wkt)
        if not (crs.is_geographic or crs.is_projected):
            return "a local or engineering CRS, not tied to the Earth"
        a, b, c, d, e, f = transform
        xs = [c + a * x + b * y for x in (0, width / 2, width) for y in (0, height / 2, height)]
        ys = [f + d * x + e * y for x in (0, width / 2, width) for y in (0, height / 2, height)]
        with rasterio.Env(**HARDENED_GDAL):
            lons, lats = rasterio.warp.transform(crs, "EPSG:4326", xs, ys)
            back_x, back_y = rasterio.warp.transform("EPSG:4326", crs, lons, lats)
    except Exception:  # PROJ and GDAL raise many kinds; any means unusable
        return "its projection fails on the raster's corners"
    if not all(math.isfinite(v) for v in (*lons, *lats)) or any(abs(v) > 90 for v in lats):
        return "its projection puts the raster's corners off the Earth"
    # A degenerate projection (a scale factor of 1e-9, say) maps every corner to
    # about one point and cannot be inverted: the round trip shows it.
    span = max(math.hypot(xs[0] - xs[-1], ys[0] - ys[-1]), 1e-12)
    error = max(
        math.hypot(x - bx, y - by) for x, y, bx, by in zip(xs, ys, back_x, back_y, strict=True)
    )
    if not math.isfinite(error) or error > 1e-3 * span:
        return "its projection is degenerate"
    return None
