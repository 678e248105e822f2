"""The prediction runner: a sync input through its model's task into a new job's record."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from service.api.state import AppState
from service.pipeline.inputs import validate_json
from service.pipeline.intake import SyncRequest, UploadOptions
from service.pipeline.runner import PredictionRunner, model_ref
from tests.helpers.bodies import parcels
from tests.helpers.geotiff import geotiff, noise
from tests.helpers.state import CROPS, FOOTPRINTS, run


def test_an_image_becomes_a_raster_job_with_a_layer_per_output(tmp_path: Path) -> None:
    async def scenario(state: AppState) -> None:
        served = state.repository.get("footprints")
        request = await state.intake.upload(served, [geotiff(noise(3, 64))], UploadOptions())
        assert isinstance(request, SyncRequest)
        stored = await PredictionRunner(state.store, 60).run(served, request.input, "owner-a")
        request.held.release()
        record = stored.record
        assert record.kind == "raster"
        assert record.model == model_ref(served.manifest)
        assert record.owner == "owner-a"
        names = record.layer_names()
        assert names[0] == served.manifest.prediction.name
        assert {o.name for o in served.manifest.attention} <= set(names)
        assert record.georef is not None
        assert record.georef["width"] == 64
        assert stored.arrays[names[0]].shape[-2:] == (64, 64)
        # Nothing is stored by the runner itself: the caller stores the job.
        assert not state.store.exists(record.id)

    run(tmp_path, (FOOTPRINTS,), scenario)


def test_series_become_a_job_with_probabilities_and_attention_per_parcel(tmp_path: Path) -> None:
    body = parcels(np.full((3, 2, 10), 1500.0), dates=["2024-04-03", "2024-05-20"])

    async def scenario(state: AppState) -> None:
        served = state.repository.get("crops")
        request = await state.intake.json(served, validate_json(body))
        stored = await PredictionRunner(state.store, 60).run(served, request.input, None)
        request.held.release()
        assert stored.record.kind == "series"
        probabilities = stored.arrays[served.manifest.prediction.name]
        assert probabilities.shape == (3, len(served.manifest.classes))
        np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
        assert model_ref(served.manifest) == {
            "name": "crops",
            "version": served.manifest.version,
            "task": "temporal_classification",
        }

    run(tmp_path, (CROPS,), scenario)
