"""Temporal classification in the pipeline: parcels and pixels from the shipped crops model."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from service.errors import InvalidInput, UnsupportedRaster
from service.pipeline.inputs import RasterInput, SeriesInput
from service.pipeline.tasks.base import CLASS_NODATA, Prediction
from service.pipeline.tasks.temporal import TemporalClassification, class_layer
from service.raster.decode import RasterInfo
from service.raster.georef import Georeference
from service.runtime.manifest import Manifest
from service.runtime.repository import ServedModel
from tests.helpers.served import served_model


def _run(tmp_path: Path, make: object) -> tuple[Prediction, Manifest]:
    async def main() -> tuple[Prediction, Manifest]:
        async with served_model("crops-1*", tmp_path) as served:
            inp = make(served)  # type: ignore[operator]
            return await TemporalClassification().predict(served, inp, 60.0), served.manifest

    return asyncio.run(main())


def _series(served: ServedModel, n: int, t: int = 4) -> tuple[np.ndarray, np.ndarray]:
    lo, hi = served.manifest.input.value_range
    rng = np.random.default_rng(0)
    bands = len(served.manifest.input.bands)
    series = rng.uniform(lo, (lo + hi) / 2, (n, t, bands)).astype(np.float32)
    return series, np.ones((n, t), bool)


def test_parcels_become_a_series_job_with_their_ids(tmp_path: Path) -> None:
    def make(served: ServedModel) -> SeriesInput:
        series, valid = _series(served, 3)
        days = np.array([10, 40, 70, 100], np.float32)
        return SeriesInput(series, valid, days, [], ["a", "b", "c"])

    result, manifest = _run(tmp_path, make)
    assert result.kind == "series"
    assert result.georef is None
    assert result.series.ids == ["a", "b", "c"]
    assert result.series.days == [10, 40, 70, 100]
    assert result.series.classes == manifest.classes
    probs = result.arrays[manifest.prediction.name]
    assert probs.shape == (3, len(manifest.classes))
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-4)
    attention = [la for la in result.layers if la.role == "attention"]
    assert attention
    assert all(la.days == [10, 40, 70, 100] for la in attention)


def test_pixels_become_class_and_probability_maps_with_nodata_outside(tmp_path: Path) -> None:
    pixels = np.zeros((4, 5), bool)
    pixels[1:3, 1:4] = True
    georef = Georeference(None, (1.0, 0.0, 0.0, 0.0, 1.0, 0.0), 5, 4)

    def make(served: ServedModel) -> SeriesInput:
        series, valid = _series(served, int(pixels.sum()))
        days = np.array([10, 40, 70, 100], np.float32)
        dates = ["2024-01-11", "2024-02-10", "2024-03-11", "2024-04-10"]
        return SeriesInput(series, valid, days, dates, [], pixels, georef)

    result, manifest = _run(tmp_path, make)
    assert result.kind == "raster"
    assert result.layers[0] == class_layer(manifest, [4, 5])
    classes = result.arrays["class"]
    assert (classes[~pixels] == CLASS_NODATA).all()
    assert (classes[pixels] < len(manifest.classes)).all()
    probs = result.arrays[manifest.prediction.name]
    assert probs.shape == (len(manifest.classes), 4, 5)
    assert np.isnan(probs[:, ~pixels]).all()
    assert not np.isnan(probs[:, pixels]).any()
    assert result.georef == georef.to_json()


def test_images_are_not_series(tmp_path: Path) -> None:
    image = RasterInput(np.zeros((10, 4, 4), np.float32), None, None)
    with pytest.raises(TypeError, match="RasterInput"):
        _run(tmp_path, lambda _served: image)


def _info(count: int, manifest: Manifest) -> RasterInfo:
    georef = Georeference(None, (1.0, 0.0, 0.0, 0.0, 1.0, 0.0), 8, 8)
    dtype = manifest.input.accepted_dtypes[0]
    return RasterInfo(8, 8, count, dtype, None, georef, indexes=tuple(range(1, count + 1)))


def test_scene_files_hold_whole_dates_and_as_many_as_are_named(tmp_path: Path) -> None:
    async def manifest_of() -> Manifest:
        async with served_model("crops-1*", tmp_path) as served:
            return served.manifest

    manifest = asyncio.run(manifest_of())
    bands = len(manifest.input.bands)
    task = TemporalClassification()
    with pytest.raises(UnsupportedRaster):
        task.check_scene_file(manifest, _info(bands + 1, manifest))
    infos = [_info(2 * bands, manifest), _info(bands, manifest)]
    task.check_scene_file(manifest, infos[0])
    task.check_scene_dates(manifest, infos, ["2024-01-01", "2024-02-01", "2024-03-01"])
    with pytest.raises(InvalidInput, match="2 dates given for 3"):
        task.check_scene_dates(manifest, infos, ["2024-01-01", "2024-02-01"])
