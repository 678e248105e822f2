"""A raster's outline in WGS84 and its grid: the bounds GDAL computes, a closed ring."""

from __future__ import annotations

import numpy as np
import rasterio.warp
from rasterio.crs import CRS

from service.raster.extent import EDGE_POINTS, extent
from service.raster.georef import Georeference
from tests.helpers.geotiff import ORIGIN, UTM


def test_the_outline_is_a_closed_counter_clockwise_ring_within_the_bounds() -> None:
    where = extent(Georeference(CRS.from_string(UTM).to_wkt(), tuple(ORIGIN)[:6], 400, 200))  # type: ignore[arg-type]
    assert where is not None
    ring = np.array(where.geometry["coordinates"][0])
    assert len(ring) == 4 * (EDGE_POINTS - 1) + 1
    assert (ring[0] == ring[-1]).all()
    x, y = ring[:, 0], ring[:, 1]
    assert 0.5 * np.sum(x[:-1] * y[1:] - x[1:] * y[:-1]) > 0  # counter-clockwise
    left, top = ORIGIN.c, ORIGIN.f
    want = rasterio.warp.transform_bounds(
        UTM, "EPSG:4326", left, top - 100, left + 200, top, densify_pts=21
    )
    np.testing.assert_allclose(where.bbox, want, atol=1e-9)
    assert where.code == UTM
    assert where.native_bbox == [left, top - 100, left + 200, top]
    assert where.shape == [200, 400]
    assert where.gsd_m == 0.5


def test_degrees_have_no_ground_resolution_and_no_crs_no_extent() -> None:
    wgs84 = Georeference(CRS.from_epsg(4326).to_wkt(), (0.001, 0, 10, 0, -0.001, 50), 10, 10)
    where = extent(wgs84)
    assert where is not None
    assert where.gsd_m is None
    np.testing.assert_allclose(where.bbox, [10, 49.99, 10.01, 50], atol=1e-12)
    assert extent(Georeference(None, (1, 0, 0, 0, 1, 0), 10, 10)) is None
