"""Point queries of a stored synchronous job: every layer's values at one pixel."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
import rasterio.warp

from service.config import Settings
from service.errors import InvalidInput, NotFound
from service.jobs.record import JobRecord, Layer
from service.jobs.store import JobStore, open_store
from service.pipeline.points import point
from tests.helpers.geotiff import ORIGIN, UTM

CLASSES = ["wheat", "maize", "fallow"]
DATES = ["2024-04-01", "2024-05-01", "2024-06-01"]
SIDE = 32


@pytest.fixture
def store(tmp_path: Path) -> JobStore:
    return open_store(Settings(job_dir=tmp_path / "jobs"))


def _crops_job(store: JobStore, crs: bool = True) -> tuple[JobRecord, dict[str, np.ndarray]]:
    """A per-pixel crops job as the task stores it: class, probabilities, attention per head."""
    rng = np.random.default_rng(1)
    record = store.new_record({"name": "crops", "version": "1", "task": "t"}, "raster", None)
    record.georef = {
        "crs": rasterio.crs.CRS.from_string(UTM).to_wkt() if crs else None,
        "transform": list(ORIGIN)[:6],
        "width": SIDE,
        "height": SIDE,
    }
    arrays = {
        "class": rng.integers(0, 3, (SIDE, SIDE)).astype(np.uint8),
        "probs": rng.random((3, SIDE, SIDE)).astype(np.float32),
        "att": rng.random((2, 3, SIDE, SIDE)).astype(np.float32),  # (heads, T, H, W)
        "map": rng.random((4, SIDE, SIDE)).astype(np.float32),  # (heads, H, W)
    }
    arrays["class"][0] = 255
    arrays["probs"][:, 1, 1] = np.nan
    record.layers = [
        Layer("class", "prediction", "class", [SIDE, SIDE], "uint8", classes=CLASSES, nodata=255),
        Layer("probs", "prediction", "class_probabilities", [3, SIDE, SIDE], "f4", classes=CLASSES),
        Layer("att", "attention", "temporal", [2, 3, SIDE, SIDE], "float32", dates=DATES),
        Layer("map", "attention", "spatial", [4, SIDE, SIDE], "float32", heads=4),
        Layer("weights", "attention", "band", [10], "float32", storage="inline", values=[0.1] * 10),
    ]
    store.save(record, dict(arrays))
    return record, arrays


def test_a_point_has_each_layers_values_per_class_date_and_head(store: JobStore) -> None:
    record, arrays = _crops_job(store)
    x, y = rasterio.transform.Affine(*ORIGIN[:6]) * (7.5, 5.5)  # col 7, row 5
    lons, lats = rasterio.warp.transform(UTM, "EPSG:4326", [x], [y])
    body = point(record, store, lon=lons[0], lat=lats[0])
    assert (body["row"], body["col"]) == (5, 7)
    layers = {la["name"]: la for la in body["layers"]}
    assert set(layers) == {"class", "probs", "att", "map"}  # inline values are no raster
    index = int(arrays["class"][5, 7])
    assert layers["class"] == {
        "name": "class",
        "kind": "class",
        "value": index,
        "class": CLASSES[index],
    }
    assert layers["probs"]["classes"] == CLASSES
    np.testing.assert_allclose(layers["probs"]["values"], arrays["probs"][:, 5, 7], atol=1e-6)
    att = layers["att"]
    assert att["dates"] == DATES
    np.testing.assert_allclose(att["heads"], arrays["att"][:, :, 5, 7], atol=1e-6)
    np.testing.assert_allclose(att["values"], arrays["att"][:, :, 5, 7].mean(axis=0), atol=1e-6)
    np.testing.assert_allclose(layers["map"]["heads"], arrays["map"][:, 5, 7], atol=1e-6)
    assert layers["map"]["value"] == pytest.approx(arrays["map"][:, 5, 7].mean(), abs=1e-6)


def test_nodata_is_null(store: JobStore) -> None:
    record, _ = _crops_job(store)
    layers = {la["name"]: la for la in point(record, store, row=0, col=3)["layers"]}
    assert layers["class"]["value"] is None
    assert layers["class"]["class"] is None
    layers = {la["name"]: la for la in point(record, store, row=1, col=1)["layers"]}
    assert layers["probs"]["values"] == [None, None, None]


def test_a_job_without_crs_is_asked_by_pixel(store: JobStore) -> None:
    record, _ = _crops_job(store, crs=False)
    with pytest.raises(InvalidInput, match="no CRS"):
        point(record, store, lon=2.0, lat=40.0)
    assert point(record, store, row=SIDE - 1, col=0)["row"] == SIDE - 1
    with pytest.raises(InvalidInput, match="off the raster"):
        point(record, store, row=SIDE, col=0)


def test_a_series_job_has_no_point(store: JobStore) -> None:
    record = store.new_record({"name": "crops", "version": "1", "task": "t"}, "series", None)
    with pytest.raises(NotFound, match="no raster layers"):
        point(record, store, row=0, col=0)
