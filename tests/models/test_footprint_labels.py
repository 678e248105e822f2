"""Real-data reader: GeoJSON footprints land on the right pixels of a GeoTIFF."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
from rasterio.warp import transform

from models.data.footprint_labels import FootprintLabelError, read_footprints
from models.metrics import pixel_iou

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "geotiff"
IMAGE = DATA / "RGB.byte.tif"

pytestmark = pytest.mark.skipif(not IMAGE.exists(), reason="shared GeoTIFF data not present")

# A pixel window (rows, cols) of RGB.byte.tif to draw a footprint over.
ROWS, COLS = (300, 340), (400, 460)


def _window_ring(crs: str) -> list[list[float]]:
    """The window's corners, closed, in ``crs`` coordinates."""
    with rasterio.open(IMAGE) as src:
        corners = [(ROWS[0], COLS[0]), (ROWS[0], COLS[1]), (ROWS[1], COLS[1]), (ROWS[1], COLS[0])]
        xs, ys = rasterio.transform.xy(src.transform, *zip(*corners, strict=True), offset="ul")
        if crs != str(src.crs):
            xs, ys = transform(src.crs, crs, xs, ys)
    ring = [[float(x), float(y)] for x, y in zip(xs, ys, strict=True)]
    return [*ring, ring[0]]


def _write(tmp_path: Path, data: Any) -> Path:
    path = tmp_path / "footprints.geojson"
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)
    return path


def _collection(*rings: list[list[float]], **extra: Any) -> dict[str, Any]:
    features = [
        {"type": "Feature", "properties": {}, "geometry": {"type": "Polygon", "coordinates": [r]}}
        for r in rings
    ]
    return {"type": "FeatureCollection", "features": features, **extra}


def _expected() -> np.ndarray:
    with rasterio.open(IMAGE) as src:
        mask = np.zeros((src.height, src.width), np.uint8)
    mask[ROWS[0] : ROWS[1], COLS[0] : COLS[1]] = 1
    return mask


def test_wgs84_footprint_is_rasterised_over_its_pixels(tmp_path: Path) -> None:
    labels = _write(tmp_path, _collection(_window_ring("EPSG:4326")))
    image, mask = read_footprints(IMAGE, labels)
    assert image.shape == (3, 718, 791)
    assert image.dtype == np.uint8
    assert mask.shape == (718, 791)
    assert mask.dtype == np.uint8
    # Straight edges in lon/lat bend slightly in UTM: allow a pixel at the border.
    assert pixel_iou(mask, _expected()) > 0.95
    assert mask[320, 430] == 1
    assert mask[:290].sum() == 0
    assert mask[:, :390].sum() == 0


def test_legacy_crs_member_is_honoured(tmp_path: Path) -> None:
    crs = {"type": "name", "properties": {"name": "urn:ogc:def:crs:EPSG::32618"}}
    labels = _write(tmp_path, _collection(_window_ring("EPSG:32618"), crs=crs))
    _, mask = read_footprints(IMAGE, labels)
    np.testing.assert_array_equal(mask, _expected())


def test_bare_feature_and_multipolygon_are_accepted(tmp_path: Path) -> None:
    ring = _window_ring("EPSG:4326")
    feature = {"type": "Feature", "geometry": {"type": "MultiPolygon", "coordinates": [[ring]]}}
    _, mask = read_footprints(IMAGE, _write(tmp_path, feature))
    assert pixel_iou(mask, _expected()) > 0.95


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ("{not json", "not valid JSON"),
        ({"type": "FeatureCollection", "features": []}, "no footprint polygons"),
        ([1, 2], "must be an object"),
        (
            {"type": "Feature", "geometry": {"type": "Point", "coordinates": [0.0, 0.0]}},
            "Polygon or MultiPolygon, got Point",
        ),
        (
            _collection([[0, 0], [1, 0], [1, 1], [0, 0]], crs={"type": "name"}),
            "'crs' member is not understood",
        ),
    ],
)
def test_invalid_geojson_is_refused_clearly(tmp_path: Path, data: Any, message: str) -> None:
    with pytest.raises(FootprintLabelError, match=message):
        read_footprints(IMAGE, _write(tmp_path, data))


def test_footprints_elsewhere_on_earth_are_refused(tmp_path: Path) -> None:
    paris = [[2.35, 48.85], [2.36, 48.85], [2.36, 48.86], [2.35, 48.86], [2.35, 48.85]]
    with pytest.raises(FootprintLabelError, match="overlaps"):
        read_footprints(IMAGE, _write(tmp_path, _collection(paris)))


def test_wrong_band_count_is_refused(tmp_path: Path) -> None:
    labels = _write(tmp_path, _collection(_window_ring("EPSG:4326")))
    with pytest.raises(FootprintLabelError, match="has 3 bands; the model takes 4"):
        read_footprints(IMAGE, labels, bands=4)
