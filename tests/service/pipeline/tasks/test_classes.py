"""Multi-class segmentation in the pipeline: a class map, its statistics, the task's choice."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from rasterio.crs import CRS
from rasterio.transform import from_origin

from service.jobs.record import JobRecord
from service.pipeline.inputs import RasterInput
from service.pipeline.tasks import ImageSegmentation, task_for
from service.pipeline.tasks.base import Prediction
from service.pipeline.tasks.classes import ClassSegmentation
from service.pipeline.views import has_footprints
from service.raster.georef import Georeference
from service.raster.resample import plan_resampling
from service.raster.tiles import class_colormap
from service.runtime.manifest import Manifest, sidecar_path
from service.runtime.manifest_draft import draft_manifest
from service.runtime.repository import BatchLimits, ModelRepository
from service.runtime.session import SessionOptions
from tests.helpers.geotiff import ORIGIN, UTM
from tests.helpers.onnx_graphs import class_segmenter

UTM_WKT = CRS.from_string(UTM).to_wkt()

CLASSES = ["red-ish", "green-ish", "blue-ish"]


def _draft(tmp_path: Path) -> dict[str, Any]:
    return draft_manifest(class_segmenter(tmp_path / "cover-1.0.0.onnx")).manifest


def _manifest(tmp_path: Path, **edits: Any) -> Manifest:
    data = {**_draft(tmp_path), "classes": CLASSES, **edits}
    sidecar_path(tmp_path / "cover-1.0.0.onnx").write_text(json.dumps(data))
    return Manifest.from_dict(data)


def _predict(tmp_path: Path, inp: RasterInput) -> Prediction:
    async def main() -> Prediction:
        options = SessionOptions(providers=("CPUExecutionProvider",), intra_op_threads=1)
        repo = ModelRepository(tmp_path, options, lambda _m: BatchLimits(2, 1.0, 8), warmup=False)
        await repo.load()
        assert repo.failures == {}
        try:
            return await task_for(repo.get("cover").manifest).predict(repo.get("cover"), inp, 30)
        finally:
            await repo.stop(5)

    return asyncio.run(main())


def _image() -> np.ndarray:
    """``(3, 8, 8)``: the brightest band is the column's third, then a dim grey row."""
    image = np.full((3, 8, 8), 40.0, np.float32)
    for col in range(8):
        image[col % 3, :, col] = 240.0
    image[:, 7] = 100.0  # all bands equal: a third each, below any useful confidence
    return image


def test_a_class_map_comes_first_with_counts_and_areas(tmp_path: Path) -> None:
    _manifest(tmp_path, min_confidence=0.5)
    valid = np.ones((8, 8), bool)
    valid[0, :] = False
    georef = Georeference(None, tuple(from_origin(0, 0, 1, 1)), 8, 8)  # type: ignore[arg-type]
    result = _predict(tmp_path, RasterInput(_image(), valid, georef))
    assert [la.name for la in result.layers] == ["class", "probabilities", "attention"]
    classes = result.arrays["class"]
    assert classes.dtype == np.uint8
    want = np.tile(np.arange(8) % 3, (8, 1)).astype(np.uint8)
    want[0] = 255  # no data
    want[7] = 255  # no class reaches 0.5
    np.testing.assert_array_equal(classes, want)
    layer = result.layers[0]
    assert (layer.kind, layer.nodata, layer.classes) == ("class", 255, CLASSES)
    stats = layer.class_statistics or []
    assert [(s["class"], s["pixels"]) for s in stats] == [
        ("red-ish", 18),
        ("green-ish", 18),
        ("blue-ish", 12),
    ]
    # Not georeferenced (no CRS): counts, no areas.
    assert all("area_m2" not in s for s in stats)
    assert result.layers[1].classes == CLASSES
    assert result.arrays["probabilities"].shape == (3, 8, 8)


def test_without_a_minimum_every_pixel_with_data_gets_a_class(tmp_path: Path) -> None:
    _manifest(tmp_path)
    result = _predict(tmp_path, RasterInput(_image(), None, None))
    assert (result.arrays["class"] != 255).all()
    assert sum(s["pixels"] for s in result.layers[0].class_statistics or []) == 64


def test_an_image_run_on_the_models_grid_comes_back_with_every_class(tmp_path: Path) -> None:
    manifest = _manifest(tmp_path, input={**_draft(tmp_path)["input"], "gsd_m": 1.0})
    # 0.5 m pixels for a 1 m model: run at half the size, brought back.
    image = np.full((3, 64, 64), 40.0, np.float32)
    image[2, :, 32:] = 240.0
    image[0, :, :32] = 240.0
    georef = Georeference(UTM_WKT, tuple(ORIGIN)[:6], 64, 64)  # type: ignore[arg-type]
    plan = plan_resampling(georef, manifest.input.gsd_m, 1.25)
    assert plan.applied
    result = _predict(tmp_path, RasterInput(image, None, georef, plan))
    assert result.arrays["probabilities"].shape == (3, 64, 64)
    classes = result.arrays["class"]
    assert (classes[:, :30] == 0).all()
    assert (classes[:, 34:] == 2).all()
    stats = result.layers[0].class_statistics or []
    assert [s["pixels"] for s in stats][1] == 0
    assert sum(s["pixels"] for s in stats) == 64 * 64


def test_the_task_follows_the_prediction_kind(tmp_path: Path) -> None:
    manifest = _manifest(tmp_path)
    assert isinstance(task_for(manifest), ClassSegmentation)
    binary = Manifest.from_dict(
        {
            **manifest.to_dict(),
            "classes": ["building"],
            "outputs": [
                {**manifest.to_dict()["outputs"][0], "kind": "probability", "shape": [1, 1, 8, 8]}
            ],
        }
    )
    assert type(task_for(binary)) is ImageSegmentation
    # A class map's footprints are its classes' regions.
    record = JobRecord("x" * 24, {"task": "segmentation"}, "raster", 0.0, 0.0)
    record.layers = _predict(tmp_path, RasterInput(_image(), None, None)).layers
    assert has_footprints(record)


def test_class_colours_come_from_the_manifest_or_the_palette(tmp_path: Path) -> None:
    _manifest(tmp_path, class_colors=["#ff0000", "#00FF00", "#0000ff"])
    layer = _predict(tmp_path, RasterInput(_image(), None, None)).layers[0]
    assert layer.class_colors == ["#ff0000", "#00FF00", "#0000ff"]
    assert class_colormap(3, layer.class_colors) == {
        0: (255, 0, 0, 255),
        1: (0, 255, 0, 255),
        2: (0, 0, 255, 255),
    }
    _manifest(tmp_path)
    assert _predict(tmp_path, RasterInput(_image(), None, None)).layers[0].class_colors is None
    assert class_colormap(3) == class_colormap(3, [])


@pytest.mark.parametrize(
    ("edits", "words"),
    [
        ({"class_colors": ["#ff0000"]}, "class_colors: 1 colours for 3 classes"),
        ({"class_colors": ["red", "#00ff00", "#0000ff"]}, "'red' is not a colour"),
        ({"min_confidence": 1.5}, "min_confidence: must be a probability"),
        ({"classes": ["only"]}, "needs 2 to 254 class names"),
    ],
)
def test_bad_class_settings_are_refused_by_field(
    tmp_path: Path, edits: dict[str, Any], words: str
) -> None:
    with pytest.raises(ValueError, match=words):
        _manifest(tmp_path, **edits)


def test_a_requests_min_confidence_overrides_the_manifests(tmp_path: Path) -> None:
    _manifest(tmp_path, min_confidence=0.5)
    layer = _predict(tmp_path, RasterInput(_image(), None, None)).layers[0]
    assert layer.min_confidence == 0.5
    result = _predict(tmp_path, RasterInput(_image(), None, None, min_confidence=0.0))
    # The dim grey row (a third each) gets a class too once nothing is too unsure.
    assert (result.arrays["class"] != 255).all()
    assert result.layers[0].min_confidence == 0.0
    assert result.layers[0].description == "most probable class"
    strict = _predict(tmp_path, RasterInput(_image(), None, None, min_confidence=0.99995))
    assert (strict.arrays["class"] == 255).all()
    assert strict.layers[0].description == "most probable class; none below 0.99995"
    # The probabilities themselves do not change.
    np.testing.assert_array_equal(strict.arrays["probabilities"], result.arrays["probabilities"])
