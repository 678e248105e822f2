"""STAC Items of stored jobs: the ML-model fields from the manifest, dates, jobs without a place."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from service.config import Settings
from service.jobs.record import Layer, Series
from service.jobs.store import JobStore, open_store
from service.pipeline.stac import (
    CLASSIFICATION,
    MLM,
    ONNX_MEDIA_TYPE,
    PROJECTION,
    classes,
    stac_item,
)
from service.pipeline.stac_validation import validate_item
from service.runtime.manifest import Manifest

DATES = ["2024-03-02", "2024-03-19", "2024-04-08"]


@pytest.fixture
def store(tmp_path: Path) -> JobStore:
    return open_store(Settings(job_dir=tmp_path / "jobs"))


def _series_job(store: JobStore, manifest: Manifest) -> str:
    """A crops job of two parcels as the task stores it: no raster, no place."""
    model = {"name": manifest.name, "version": manifest.version, "task": manifest.task}
    record = store.new_record(model, "series", None)
    k = len(manifest.classes)
    record.layers = [
        Layer("probabilities", "prediction", "class_probabilities", [2, k], "float32"),
        Layer("attention", "attention", "temporal", [2, 8, 3], "float32", dates=DATES),
    ]
    record.series = Series(DATES, [62.0, 79.0, 99.0], manifest.classes, ["a", "b"])
    arrays = {
        "probabilities": np.full((2, k), 1 / k, np.float32),
        "attention": np.full((2, 8, 3), 1 / 3, np.float32),
    }
    store.save(record, arrays)
    return record.id


def test_a_series_job_has_no_place_but_its_dates_and_model(
    store: JobStore, crops: Manifest
) -> None:
    item = stac_item(store.load(_series_job(store, crops)), crops, "http://h")
    validate_item(item)
    assert item["geometry"] is None
    assert "bbox" not in item
    assert PROJECTION not in item["stac_extensions"]
    assert CLASSIFICATION in item["stac_extensions"]  # the classifier's classes
    props = item["properties"]
    assert (props["start_datetime"], props["end_datetime"]) == (
        "2024-03-02T00:00:00Z",
        "2024-04-08T00:00:00Z",
    )
    series = next(i for i in props["mlm:input"] if i["name"] == "series")
    assert series["input"]["dim_order"] == ["batch", "time", "bands"]
    assert series["bands"] == crops.input.bands
    valid = next(i for i in props["mlm:input"] if i["name"] == "valid")
    assert valid["input"]["data_type"] == "other"  # bool has no STAC data type
    attention = next(o for o in props["mlm:output"] if o["name"] == "attention")
    assert attention["result"]["dim_order"] == ["batch", "head", "time"]
    probabilities = next(o for o in props["mlm:output"] if o["name"] == "probabilities")
    assert [c["title"] for c in probabilities["classification:classes"]] == crops.classes
    assert set(item["assets"]) == {"job", "model", "manifest"}
    model = item["assets"]["model"]
    assert model["href"] == f"http://h/models/{crops.name}:{crops.version}/onnx"
    assert (model["type"], model["mlm:artifact_type"]) == (ONNX_MEDIA_TYPE, "onnx")
    assert item["assets"]["manifest"]["href"] == f"http://h/models/{crops.name}:{crops.version}"


def test_where_models_stay_on_the_server_the_model_asset_is_its_manifest(
    store: JobStore, crops: Manifest
) -> None:
    item = stac_item(store.load(_series_job(store, crops)), crops, "http://h", downloads=False)
    validate_item(item)
    assert set(item["assets"]) == {"job", "model"}
    model = item["assets"]["model"]
    assert model["href"] == f"http://h/models/{crops.name}:{crops.version}"
    assert "mlm:model" in model["roles"]
    assert model["type"] == "application/json"


def test_without_its_manifest_an_item_says_nothing_of_the_model(
    store: JobStore, crops: Manifest
) -> None:
    item = stac_item(store.load(_series_job(store, crops)), None, "http://h")
    validate_item(item)
    assert MLM not in item["stac_extensions"]
    assert not [k for k in item["properties"] if k.startswith("mlm:")]


def test_class_names_become_names_the_extension_allows() -> None:
    got = classes(["soy bean", "maize/corn"], nodata=True)
    assert [(c["value"], c["name"], c.get("title")) for c in got] == [
        (0, "soy_bean", "soy bean"),
        (1, "maize_corn", "maize/corn"),
        (255, "no_class", None),
    ]


def test_a_raster_without_a_crs_has_its_files_but_no_place(
    store: JobStore, footprints: Manifest
) -> None:
    model = {"name": footprints.name, "version": footprints.version, "task": footprints.task}
    record = store.new_record(model, "raster", None)
    record.georef = {"crs": None, "transform": [1, 0, 0, 0, 1, 0], "width": 8, "height": 8}
    record.layers = [Layer("probability", "prediction", "probability", [8, 8], "float32")]
    store.save(record, {"probability": np.full((8, 8), 0.5, np.float32)})
    item = stac_item(store.load(record.id), footprints, "http://h")
    validate_item(item)
    assert item["geometry"] is None
    assert PROJECTION not in item["stac_extensions"]
    band = item["assets"]["prediction"]["bands"][0]
    assert band["name"] == "probability"
    assert "raster:spatial_resolution" not in band
    assert "overview" not in item["assets"]  # no map without a place


def test_class_colours_are_the_models_where_it_names_them() -> None:
    got = classes(["wheat", "maize"], colours=["#112233"])
    assert [c["color_hint"] for c in got] == ["112233", "f28e2b"]  # then the tiles' palette
