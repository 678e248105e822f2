"""Segmentation in the pipeline: one image's layers from the shipped footprints model."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from service.errors import UnsupportedRaster
from service.pipeline.inputs import RasterInput, SeriesInput
from service.pipeline.scene_read import open_scene
from service.pipeline.tasks.base import Prediction
from service.pipeline.tasks.segmentation import ImageSegmentation, round_up
from service.raster.decode import describe
from tests.helpers.geotiff import noise, write_geotiff
from tests.helpers.served import served_model


def _predict(tmp_path: Path, inp: RasterInput | SeriesInput) -> tuple[Prediction, list[str]]:
    async def main() -> tuple[Prediction, list[str]]:
        async with served_model("footprints-*", tmp_path) as served:
            names = [o.name for o in served.manifest.outputs]
            return await ImageSegmentation().predict(served, inp, 60.0), names

    return asyncio.run(main())


def test_every_output_becomes_a_layer_of_a_raster_job(tmp_path: Path) -> None:
    image = noise(size=64).astype(np.float32)
    valid = np.ones((64, 64), bool)
    valid[:, :8] = False
    result, names = _predict(tmp_path, RasterInput(image, valid, None))
    assert result.kind == "raster"
    assert [la.name for la in result.layers] == names
    assert set(result.arrays) == set(names)
    # Without a georeference the job lies on pixel coordinates.
    assert result.georef == {
        "crs": None,
        "transform": [1, 0, 0, 0, 1, 0],
        "width": 64,
        "height": 64,
    }
    assert result.resampling.applied is False
    prediction = result.arrays[names[0]]
    assert prediction.shape == (64, 64)
    assert np.isnan(prediction[:, :8]).all()
    assert not np.isnan(prediction[:, 8:]).any()
    for layer in result.layers:
        assert layer.shape[-2:] == [64, 64] or layer.kind == "channel"
        if (layer.stride or 1) > 1:
            # Coarse maps are kept small; their mask is the prediction's NaN.
            assert result.arrays[layer.name].shape[0] < 64
            assert layer.mask == names[0]


def test_series_are_not_images(tmp_path: Path) -> None:
    series = SeriesInput(
        np.zeros((1, 2, 3), np.float32), np.ones((1, 2), bool), np.zeros(2), [], ["a"]
    )
    with pytest.raises(TypeError, match="SeriesInput"):
        _predict(tmp_path, series)


def test_a_scene_of_the_wrong_band_count_is_refused_from_its_header(tmp_path: Path) -> None:
    path = write_geotiff(tmp_path / "two.tif", noise(bands=2, size=32))
    assert isinstance(path, Path)

    async def manifest_of() -> object:
        async with served_model("footprints-*", tmp_path / "m") as served:
            return served.manifest

    (tmp_path / "m").mkdir()
    manifest = asyncio.run(manifest_of())
    with open_scene(path) as ds:
        info = describe(ds)
    with pytest.raises(UnsupportedRaster, match="band count 2"):
        ImageSegmentation().check_scene_file(manifest, info)  # type: ignore[arg-type]
    ImageSegmentation().check_scene_dates(manifest, [info], [])  # type: ignore[arg-type]


def test_scene_tiles_round_up_to_the_model_multiple() -> None:
    assert round_up(500, 32) == 512
    assert round_up(512, 32) == 512
    assert round_up(1, 32) == 32
