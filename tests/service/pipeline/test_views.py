"""Views of a stored job: links, the attention listing, band choices and one layer's JSON."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from service.api.state import AppState
from service.errors import Conflict, InvalidInput
from service.jobs.record import JobRecord
from service.pipeline import views
from service.pipeline.inputs import validate_json
from tests.helpers.bodies import parcels
from tests.helpers.geotiff import geotiff, noise, read_geotiff
from tests.helpers.state import CROPS, FOOTPRINTS, run, stored_upload


def test_a_raster_job_is_listed_linked_and_served_by_layer(tmp_path: Path) -> None:
    async def scenario(state: AppState) -> None:
        served = state.repository.get("footprints")
        record = await stored_upload(state, "footprints", geotiff(noise(3, 64)))

        links = views.links(record)
        assert links["self"] == f"/jobs/{record.id}"
        assert links["footprints"] == f"/jobs/{record.id}/footprints"
        assert views.has_footprints(record)
        assert links["prediction_geotiff"].endswith("?format=geotiff")
        assert views.output_files(record) == []  # a sync job keeps no COGs

        spatial = views.spatial_attention_names(record)
        assert "gate_1" in spatial
        assert views.prediction_names(record) == [served.manifest.prediction.name, *spatial]
        listing = views.attention_listing(record)
        assert listing["georeference"]["width"] == 64
        gate = next(la for la in listing["layers"] if la["name"] == "gate_1")
        assert gate["geotiff_url"] == f"/attention/{record.id}/gate_1?format=geotiff"

        one = views.layer_json(record, state.store, "gate_1")
        assert one["shape"] == [64, 64]  # served on the input's grid
        bands = read_geotiff(views.geotiff(record, state.store, ["gate_1"]))
        assert bands.shape == (1, 64, 64)

        record.state = "running"
        with pytest.raises(Conflict, match="job is running"):
            views.require_done(record)

    run(tmp_path, (FOOTPRINTS,), scenario)


async def _series_job(state: AppState, seed: int) -> JobRecord:
    """A crops job of two random parcels over three dates, run and stored."""
    served = state.repository.get("crops")
    bands = len(served.manifest.input.bands)
    series = np.random.default_rng(seed).uniform(500, 4000, (2, 3, bands))
    dates = ["2024-03-02", "2024-03-19", "2024-04-08"]
    request = await state.intake.json(served, validate_json(parcels(series, dates=dates)))
    stored = await state.jobs.run(request, None)
    request.held.release()
    return stored.record


def test_a_series_job_stored_with_one_extra_dict_answers_as_it_did(tmp_path: Path) -> None:
    async def scenario(state: AppState) -> None:
        record = await _series_job(state, seed=3)
        state.store.flush()
        record = state.store.load(record.id, None)
        answer = views.job_json(record, state.store)
        assert answer["prediction"]["items"][1]["id"] == "p1"
        assert not views.has_footprints(record)
        assert "footprints" not in answer["links"]

        # The same job as earlier versions wrote it: its dates, classes and ids in "extra".
        old = dataclasses.asdict(record)
        old["extra"] = {**old.pop("series"), "runs": old.pop("runs")}
        for name in ("tiling", "resampling", "resumed", "eta_s", "seconds"):
            del old[name]
        legacy = JobRecord(**json.loads(json.dumps(old)))
        assert views.job_json(legacy, state.store) == answer

    run(tmp_path, (CROPS,), scenario)


def test_one_head_of_a_series_attention_layer_as_json(tmp_path: Path) -> None:
    async def scenario(state: AppState) -> None:
        record = await _series_job(state, seed=4)
        (layer,) = [x for x in record.layers if x.role == "attention" and x.kind == "temporal"]
        every = views.layer_json(record, state.store, layer.name)
        heads = len(every["items"][0]["weights"])
        assert heads > 1
        assert "head" not in every
        one = views.layer_json(record, state.store, layer.name, head=heads - 1)
        assert one["head"] == heads - 1
        for item, whole in zip(one["items"], every["items"], strict=True):
            assert item["id"] == whole["id"]
            assert item["weights"] == whole["weights"][heads - 1]
            assert "mean" not in item
        with pytest.raises(InvalidInput, match=f"head {heads} is out of range"):
            views.layer_json(record, state.store, layer.name, head=heads)

    run(tmp_path, (CROPS,), scenario)
