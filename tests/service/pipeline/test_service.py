"""The job service: sync jobs run and stored, scene jobs stored, queued, refused or cancelled."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import rasterio

from service.api.state import AppState
from service.errors import NotFound, Overloaded, UnsupportedRaster
from service.pipeline.intake import SceneRequest, SyncRequest, UploadOptions
from tests.helpers.geotiff import geotiff, noise
from tests.helpers.state import FOOTPRINTS, run


async def _sync(state: AppState, image: bytes) -> SyncRequest:
    got = await state.intake.upload(state.repository.get("footprints"), [image], UploadOptions())
    assert isinstance(got, SyncRequest)
    return got


async def _scene(state: AppState, image: bytes) -> SceneRequest:
    served = state.repository.get("footprints")
    got = await state.intake.upload(served, [image], UploadOptions(run_async=True, uint8=True))
    assert isinstance(got, SceneRequest)
    return got


@pytest.mark.parametrize("write_behind", [False, True], ids=["written", "written-behind"])
def test_a_sync_job_runs_is_stored_and_answers_from_memory(
    tmp_path: Path, write_behind: bool
) -> None:
    image = geotiff(noise(3, 64))

    async def scenario(state: AppState) -> None:
        request = await _sync(state, image)
        stored = await state.jobs.run(request, "owner-a")
        request.held.release()
        state.store.flush()
        record = state.store.load(stored.record.id, "owner-a")
        assert record.layer_names() == stored.record.layer_names()
        body = state.jobs.result(stored)
        assert body["job_id"] == record.id
        assert body["georeference"]["width"] == 64
        data = await state.jobs.prediction_geotiff(record)
        with rasterio.open(io.BytesIO(data)) as out:
            assert (out.width, out.height) == (64, 64)
            assert out.crs.to_epsg() == 32631
        with pytest.raises(NotFound):
            state.store.load(record.id, "owner-b")

    run(tmp_path, (FOOTPRINTS,), scenario, job_write_behind=write_behind)


def test_a_scene_job_is_stored_with_its_input_and_queued(tmp_path: Path) -> None:
    image = geotiff(noise(3, 96))

    async def scenario(state: AppState) -> None:
        record = await state.jobs.submit(await _scene(state, image), None)
        assert state.jobs.queued == 1
        kept = state.store.load(record.id, None)
        assert kept.state == "queued"
        assert kept.params["inputs"] == ["input_0.tif"]
        assert kept.params["options"]["uint8"] is True
        assert kept.georef is not None
        assert kept.georef["width"] == 96
        assert kept.resampling is not None
        body = state.jobs.status(kept)
        assert body["state"] == "queued"
        cancelled = state.jobs.cancel(kept)
        assert state.store.load(record.id, None).state == cancelled.state == "cancelled"

    run(tmp_path, (FOOTPRINTS,), scenario)


def test_a_scene_whose_files_fail_their_check_leaves_no_job(tmp_path: Path) -> None:
    faint = geotiff(np.random.default_rng(0).integers(0, 2, (3, 96, 96)).astype("uint8"))

    async def scenario(state: AppState) -> None:
        before = state.store.count
        with pytest.raises(UnsupportedRaster):
            await state.jobs.submit(await _scene(state, faint), None)
        assert state.store.count == before
        assert state.jobs.queued == 0

    run(tmp_path, (FOOTPRINTS,), scenario)


def test_a_scene_the_queue_refuses_is_taken_back(tmp_path: Path) -> None:
    image = geotiff(noise(3, 96))

    async def scenario(state: AppState) -> None:
        await state.jobs.submit(await _scene(state, image), None)
        before = state.store.count
        with pytest.raises(Overloaded):
            await state.jobs.submit(await _scene(state, image), None)
        assert state.store.count == before
        assert state.jobs.queued == 1

    run(tmp_path, (FOOTPRINTS,), scenario, max_queued_jobs=1)
