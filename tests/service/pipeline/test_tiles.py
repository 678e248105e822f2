"""A job's map layers: names per class and date, tiles of stored arrays, TileJSON and WMTS."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import rasterio
import rasterio.warp

from service.config import Settings
from service.errors import InvalidInput, NotFound
from service.jobs.record import JobRecord, Layer
from service.jobs.store import JobStore, open_store
from service.pipeline.tiles import ArrayRasters, JobTiles, TileAddress, tile_layers
from service.raster.tiles import class_colormap
from tests.helpers.geotiff import ORIGIN, UTM
from tests.helpers.tiles import rgba, tile_at

# GDAL reads GDAL_SKIP once, when it first registers its drivers. In-process app
# tests skip VRT, which rio-tiler's warps need: register the drivers at collection.
with rasterio.Env():
    pass

MODEL = {"name": "crops", "version": "1", "task": "temporal_classification"}
CLASSES = ["wheat", "maize", "fallow"]
DATES = ["2024-04-01", "2024-05-01"]
NS = {"w": "http://www.opengis.net/wmts/1.0", "ows": "http://www.opengis.net/ows/1.1"}


def _crops_job(store: JobStore, side: int = 64) -> JobRecord:
    """A synchronous per-pixel crops job as the task stores it: class, probabilities, attention."""
    rng = np.random.default_rng(0)
    record = store.new_record(MODEL, "raster", None)
    record.georef = {
        "crs": rasterio.crs.CRS.from_string(UTM).to_wkt(),
        "transform": list(ORIGIN)[:6],
        "width": side,
        "height": side,
    }
    classes = rng.integers(0, 3, (side, side)).astype(np.uint8)
    classes[: side // 4] = 255
    probs = rng.random((3, side, side)).astype(np.float32)
    attention = rng.random((2, 2, side, side)).astype(np.float32)  # (heads, T, H, W)
    record.layers = [
        Layer("class", "prediction", "class", [side, side], "uint8", classes=CLASSES, nodata=255),
        Layer(
            "probs",
            "prediction",
            "class_probabilities",
            [3, side, side],
            "float32",
            classes=CLASSES,
        ),
        Layer("att", "attention", "temporal", [2, 2, side, side], "float32", dates=DATES),
    ]
    store.save(record, {"class": classes, "probs": probs, "att": attention})
    return record


@pytest.fixture
def store(tmp_path: Path) -> JobStore:
    return open_store(Settings(job_dir=tmp_path / "jobs"))


def test_map_layers_are_each_raster_layer_per_class_and_per_date(store: JobStore) -> None:
    record = _crops_job(store)
    names = [tl.name for tl in tile_layers(record)]
    per_date = [f"att:{d}" for d in DATES]
    assert names == ["class", "probs:wheat", "probs:maize", "probs:fallow", *per_date]
    legend = tile_layers(record)[0].legend()
    assert [c["name"] for c in legend["classes"]] == CLASSES
    series = JobRecord("x" * 24, MODEL, "series", 0.0, 1e12, layers=record.layers)
    assert tile_layers(series) == []
    georef = {**(record.georef or {}), "crs": None}
    unplaced = JobRecord("y" * 24, MODEL, "raster", 0.0, 1e12, record.layers, georef)
    with pytest.raises(NotFound, match="no georeferenced raster layers"):
        JobTiles(store).tile(unplaced, TileAddress("class", 18, 0, 0, "png"))


def test_tiles_of_stored_arrays_use_class_colours_and_the_mean_over_heads(
    store: JobStore,
) -> None:
    record = _crops_job(store)
    tiles = JobTiles(store)
    west, south, east, north = tiles.tilejson(record, "class", "http://x", "png")["bounds"]
    z, x, y = tile_at((west + east) / 2, (south + north) / 2, 18)
    shown = rgba(tiles.tile(record, TileAddress("class", z, x, y, "png")))
    colours = {tuple(c[:3]) for c in class_colormap(3).values()}
    assert {tuple(int(v) for v in px) for px in shown[:3, shown[3] == 255].T} <= colours
    assert (shown[3] == 0).any()  # the rows without a class
    date = rgba(tiles.tile(record, TileAddress("att:2024-05-01", z, x, y, "png")))
    assert (date[3] == 255).any()
    assert tiles.arrays.size > 0
    with pytest.raises(NotFound, match=r"map layers: class, probs:wheat"):
        tiles.tile(record, TileAddress("att", z, x, y, "png"))
    with pytest.raises(InvalidInput, match="zoom"):
        tiles.tile(record, TileAddress("class", 40, 0, 0, "png"))


def test_a_class_map_is_drawn_and_explained_in_its_models_colours(store: JobStore) -> None:
    record = _crops_job(store)
    mine = ["#ff0000", "#00ff00", "#0000ff"]
    record.layers[0].class_colors = mine
    legend = tile_layers(record)[0].legend()
    assert [(c["name"], c["color"]) for c in legend["classes"]] == list(
        zip(CLASSES, mine, strict=True)
    )
    shown = rgba(JobTiles(store).preview(record, "class", "png"))
    drawn = {tuple(int(v) for v in px) for px in shown[:3, shown[3] == 255].T}
    assert drawn <= {(255, 0, 0), (0, 255, 0), (0, 0, 255)}
    assert len(drawn) == 3


def test_array_rasters_are_made_once_and_the_least_recent_go_first(store: JobStore) -> None:
    record = _crops_job(store)
    arrays = ArrayRasters(max_bytes=1)
    first = arrays.get(record, store, record.layer("class"))
    assert arrays.get(record, store, record.layer("class")) is first
    arrays.get(record, store, record.layer("probs"))
    assert arrays.size == len(arrays.get(record, store, record.layer("probs")))
    arrays.forget(record.id)
    assert arrays.size == 0


def test_tilejson_bounds_are_the_inputs_in_wgs84(store: JobStore) -> None:
    record = _crops_job(store, side=64)
    body = JobTiles(store).tilejson(record, "probs:maize", "http://h:1", "webp")
    left, top = ORIGIN.c, ORIGIN.f
    want = rasterio.warp.transform_bounds(
        UTM, "EPSG:4326", left, top - 64 * 0.5, left + 64 * 0.5, top, densify_pts=21
    )
    np.testing.assert_allclose(body["bounds"], want, atol=1e-9)
    assert body["tiles"] == [
        f"http://h:1/jobs/{record.id}/tiles/probs:maize/{{z}}/{{x}}/{{y}}.webp"
    ]
    assert body["minzoom"] <= body["maxzoom"] == body["center"][2]


def test_wmts_capabilities_list_every_map_layer_on_web_mercator(store: JobStore) -> None:
    record = _crops_job(store)
    root = ET.fromstring(JobTiles(store).wmts(record, "http://h:1"))
    layers = root.findall("w:Contents/w:Layer", NS)
    assert [la.findtext("ows:Identifier", namespaces=NS) for la in layers] == [
        tl.name for tl in tile_layers(record)
    ]
    template = layers[0].find("w:ResourceURL", NS).get("template")  # type: ignore[union-attr]
    assert (
        template
        == f"http://h:1/jobs/{record.id}/tiles/class/{{TileMatrix}}/{{TileCol}}/{{TileRow}}.png"
    )
    matrices = root.findall("w:Contents/w:TileMatrixSet/w:TileMatrix", NS)
    assert [m.findtext("ows:Identifier", namespaces=NS) for m in matrices][:2] == ["0", "1"]
    assert matrices[1].findtext("w:MatrixWidth", namespaces=NS) == "2"
