"""Chip classification in the pipeline: probabilities inline, maps on the chip, no scenes."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
import pytest
from rasterio.crs import CRS

from service.errors import UnsupportedRaster
from service.pipeline.inputs import RasterInput
from service.pipeline.tasks import task_for
from service.pipeline.tasks.base import Prediction
from service.pipeline.tasks.chips import ChipClassification
from service.raster.decode import RasterInfo
from service.raster.georef import Georeference
from service.runtime.manifest import Manifest, sidecar_path
from service.runtime.manifest_draft import draft_manifest
from tests.helpers.geotiff import ORIGIN, UTM
from tests.helpers.onnx_graphs import chip_classifier
from tests.helpers.served import served_from

CLASSES = ["reddish", "greenish", "bluish"]


@pytest.fixture
def manifest(tmp_path: Path) -> Manifest:
    model = chip_classifier(tmp_path / "scenes-1.0.0.onnx")
    data = {**draft_manifest(model).manifest, "classes": CLASSES}
    sidecar_path(model).write_text(json.dumps(data))
    return Manifest.from_dict(data)


def _predict(tmp_path: Path, inp: RasterInput) -> Prediction:
    async def main() -> Prediction:
        async with served_from(tmp_path, "scenes") as served:
            return await task_for(served.manifest).predict(served, inp, 30)

    return asyncio.run(main())


def test_a_chip_answers_with_its_class_probabilities_and_attention_maps(
    tmp_path: Path, manifest: Manifest
) -> None:
    assert isinstance(task_for(manifest), ChipClassification)
    chip = np.full((3, 64, 64), 50.0, np.float32)
    chip[2] = 230.0
    georef = Georeference(CRS.from_string(UTM).to_wkt(), tuple(ORIGIN)[:6], 64, 64)  # type: ignore[arg-type]
    result = _predict(tmp_path, RasterInput(chip, None, georef))
    assert result.kind == "raster"
    assert [la.name for la in result.layers] == ["probabilities", "tokens", "gate"]
    probs = result.layers[0]
    assert (probs.role, probs.kind, probs.shape, probs.classes) == (
        "prediction",
        "class_probabilities",
        [3],
        CLASSES,
    )
    values = probs.values or []
    assert len(values) == 3
    assert sum(values) == pytest.approx(1.0, abs=1e-5)
    assert int(np.argmax(values)) == 2
    assert probs.description is not None
    assert probs.description.startswith("most probable: bluish")
    tokens, gate = result.layers[1:]
    # The token grid's two heads are kept, one map each; the gate has one.
    assert (tokens.role, tokens.shape, tokens.heads) == ("attention", [2, 64, 64], 2)
    assert (gate.role, gate.shape, gate.heads) == ("attention", [64, 64], None)
    assert result.arrays["tokens"].shape == (2, 64, 64)
    mean = result.arrays["tokens"].mean(axis=0)
    assert tokens.statistics is not None
    assert tokens.statistics["max"] == pytest.approx(float(np.nanmax(mean)))
    assert result.georef is not None
    assert result.georef["width"] == 64


def test_a_scene_of_the_models_bands_is_taken_and_others_refused(manifest: Manifest) -> None:
    georef = Georeference(CRS.from_string(UTM).to_wkt(), tuple(ORIGIN)[:6], 4096, 4096)  # type: ignore[arg-type]
    ChipClassification().check_scene_file(
        manifest, RasterInfo(4096, 4096, 3, "uint8", None, georef)
    )
    with pytest.raises(UnsupportedRaster, match="3 bands"):
        ChipClassification().check_scene_file(
            manifest, RasterInfo(4096, 4096, 4, "uint8", None, georef)
        )


def test_a_requests_min_confidence_is_stated_and_below_it_there_is_no_class(
    tmp_path: Path, manifest: Manifest
) -> None:
    chip = np.full((3, 64, 64), 50.0, np.float32)
    chip[2] = 230.0
    sure = _predict(tmp_path, RasterInput(chip, None, None, min_confidence=0.5)).layers[0]
    assert sure.min_confidence == 0.5
    assert sure.description is not None
    assert sure.description.startswith("most probable: bluish")
    unsure = _predict(tmp_path, RasterInput(chip, None, None, min_confidence=0.999)).layers[0]
    assert unsure.min_confidence == 0.999
    assert unsure.description is not None
    assert unsure.description.startswith("no class: the most probable, bluish")
    assert unsure.values == sure.values
