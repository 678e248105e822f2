"""Ground resolution: metres per pixel on the WGS84 ellipsoid, or none where unusable."""

from __future__ import annotations

import math

import pytest
from rasterio.crs import CRS
from rasterio.transform import Affine

from service.raster.georef import Georeference
from service.raster.gsd import ground_resolution

UTM40 = CRS.from_epsg(32640).to_wkt()
WGS84 = CRS.from_epsg(4326).to_wkt()
# Near Dubai, close to zone 40's central meridian: grid metres are ground metres.
ORIGIN = (326_000.0, 2_788_000.0)


def _utm(pixel: float, width: int = 100, height: int = 80) -> Georeference:
    return Georeference(UTM40, (pixel, 0, ORIGIN[0], 0, -pixel, ORIGIN[1]), width, height)


def test_projected_metres_are_the_pixel_size() -> None:
    gx, gy = ground_resolution(_utm(0.5)) or (0, 0)
    assert gx == pytest.approx(0.5, rel=1e-3)
    assert gy == pytest.approx(0.5, rel=1e-3)


def test_degrees_are_metres_at_the_image_centre() -> None:
    # 1e-5 degree pixels centred on 25 N: a degree of latitude is 110.77 km
    # there on WGS84, a degree of longitude 111.32 km x cos(25) = 100.95 km.
    deg = 1e-5
    georef = Georeference(WGS84, (deg, 0, 55.0, 0, -deg, 25.0 + 50 * deg), 100, 100)
    gx, gy = ground_resolution(georef) or (0, 0)
    assert gx == pytest.approx(1.0095, rel=2e-3)
    assert gy == pytest.approx(1.1077, rel=2e-3)
    # Nearer the pole a degree of longitude is shorter: the centre counts.
    north = Georeference(WGS84, (deg, 0, 55.0, 0, -deg, 60.0 + 50 * deg), 100, 100)
    assert (ground_resolution(north) or (0, 0))[0] == pytest.approx(0.5583, rel=2e-3)


def test_rotated_and_non_square_pixels() -> None:
    rotated = Affine.translation(*ORIGIN) * Affine.rotation(30) * Affine.scale(0.5, -0.25)
    gx, gy = ground_resolution(Georeference(UTM40, tuple(rotated)[:6], 50, 50)) or (0, 0)
    assert gx == pytest.approx(0.5, rel=1e-3)
    assert gy == pytest.approx(0.25, rel=1e-3)


def test_across_the_antimeridian_the_short_way_round() -> None:
    # A 1e-4 degree pixel whose edges straddle 180 degrees east at the equator.
    deg = 1e-4
    georef = Georeference(WGS84, (deg, 0, 180.0 - deg / 2, 0, -deg, deg / 2), 1, 1)
    gx, _ = ground_resolution(georef) or (0, 0)
    assert gx == pytest.approx(deg * math.pi / 180 * 6_378_137, rel=1e-3)
