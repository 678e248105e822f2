"""Intake: uploads and JSON bodies become sync or scene requests, each upload opened once."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from rasterio.io import DatasetReader

from service.api.state import AppState
from service.errors import InvalidInput, PayloadTooLarge, UnsupportedRaster
from service.pipeline import intake as intake_module
from service.pipeline.inputs import RasterInput, SeriesInput, validate_json
from service.pipeline.intake import DECODE_RATIO, SceneRequest, SyncRequest, UploadOptions
from service.raster.decode import open_geotiff
from tests.helpers.geotiff import geotiff, noise
from tests.helpers.state import CROPS, FOOTPRINTS, run

DATES = ["2024-04-03", "2024-05-20"]


def dated_stack(size: int, dates: list[str], tagged: bool = True, seed: int = 0) -> bytes:
    """A crops stack: 10 uint16 bands per date, date-major, DATE band tags if ``tagged``."""
    rng = np.random.default_rng(seed)
    data = rng.integers(300, 4000, (10 * len(dates), size, size)).astype("uint16")
    tags = [{"DATE": d} for d in dates for _ in range(10)] if tagged else None
    return geotiff(data, tags=tags, crs="EPSG:32631")


@contextlib.contextmanager
def counting_opens(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """Counts the intake's opens of uploaded bytes (the real open runs each time)."""
    opened: list[int] = []
    real = open_geotiff

    @contextlib.contextmanager
    def counted(data: bytes) -> Iterator[DatasetReader]:
        opened.append(len(data))
        with real(data) as dataset:
            yield dataset

    monkeypatch.setattr(intake_module, "open_geotiff", counted)
    yield opened


def test_form_fields_become_typed_options() -> None:
    options = UploadOptions.from_fields(
        {"dates": "2024-04-03, 2024-05-20", "async": "yes", "tile_size": "256", "overlap": "64"}
    )
    assert options.dates == [date(2024, 4, 3), date(2024, 5, 20)]
    assert options.run_async is True
    assert (options.tile_size, options.overlap, options.uint8, options.compress) == (
        256,
        64,
        False,
        "deflate",
    )
    assert UploadOptions.from_fields({}, run_async="1").run_async is True
    assert UploadOptions.from_fields({}) == UploadOptions()


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"tile_size": "10"}, "tile_size must be between 64 and 4096"),
        ({"tile_size": "big"}, "tile_size must be an integer"),
        ({"overlap": "x"}, "overlap must be an integer"),
        ({"tile_size": "128", "overlap": "65"}, "overlap may be at most half of tile_size"),
        ({"compress": "lzw"}, "compress must be deflate or zstd"),
        ({"async": "maybe"}, "async must be true or false"),
        ({"uint8": "2"}, "uint8 must be true or false"),
        ({"dates": "2024-13-01"}, "dates:"),
    ],
)
def test_bad_form_options_are_refused(fields: dict[str, str], message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        UploadOptions.from_fields(fields)


def test_a_small_upload_is_opened_once_decoded_and_its_memory_held(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = noise(3, 64)

    async def scenario(state: AppState) -> None:
        served = state.repository.get("footprints")
        with counting_opens(monkeypatch) as opened:
            got = await state.intake.upload(served, [geotiff(data)], UploadOptions())
        assert len(opened) == 1
        assert isinstance(got, SyncRequest)
        assert isinstance(got.input, RasterInput)
        np.testing.assert_array_equal(got.input.data, data)
        assert got.input.resampling is not None
        assert not got.input.resampling.applied
        assert state.budget.in_use == got.held.nbytes > 0
        got.held.release()
        assert state.budget.in_use == 0

    run(tmp_path, (FOOTPRINTS,), scenario)


def test_a_cancelled_upload_releases_the_memory_its_decoding_reserved(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The decode runs on a thread that a cancel cannot stop; when it ends, the
    # reservation it made must go back, although nobody awaits it any more.
    decoding, finish = threading.Event(), threading.Event()
    read = intake_module.uploads.read_open_image

    def slow_read(*args: Any) -> RasterInput:
        decoding.set()
        finish.wait(10)
        return read(*args)

    monkeypatch.setattr(intake_module.uploads, "read_open_image", slow_read)

    async def scenario(state: AppState) -> None:
        served = state.repository.get("footprints")
        task = asyncio.create_task(
            state.intake.upload(served, [geotiff(noise(3, 64))], UploadOptions())
        )
        await asyncio.to_thread(decoding.wait, 10)
        assert state.budget.in_use > 0
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task  # at once, with the decode still running
        finish.set()
        for _ in range(200):
            if state.budget.in_use == 0:
                break
            await asyncio.sleep(0.01)
        assert state.budget.in_use == 0

    run(tmp_path, (FOOTPRINTS,), scenario)


def test_an_upload_asked_as_a_job_or_over_the_sync_size_is_a_scene(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def scenario(state: AppState) -> None:
        served = state.repository.get("footprints")
        small, large = geotiff(noise(3, 64)), geotiff(noise(3, 96))
        with counting_opens(monkeypatch) as opened:
            asked = await state.intake.upload(served, [small], UploadOptions(run_async=True))
            over = await state.intake.upload(served, [large], UploadOptions(compress="zstd"))
        assert len(opened) == 2
        for got, side in ((asked, 64), (over, 96)):
            assert isinstance(got, SceneRequest)
            assert (got.georef.width, got.georef.height) == (side, side)
            assert got.resampling is not None
            assert got.options.dates == []
        assert isinstance(over, SceneRequest)
        assert over.options.compress == "zstd"
        assert state.budget.in_use == 0  # nothing decoded, nothing held

    run(tmp_path, (FOOTPRINTS,), scenario, max_sync_pixels=64 * 64)


def test_a_segmentation_model_takes_one_image(tmp_path: Path) -> None:
    async def scenario(state: AppState) -> None:
        served = state.repository.get("footprints")
        image = geotiff(noise(3, 32))
        with pytest.raises(InvalidInput, match="takes one image, got 2"):
            await state.intake.upload(served, [image, image], UploadOptions())

    run(tmp_path, (FOOTPRINTS,), scenario)


def test_dated_uploads_are_each_opened_once_into_series(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    parts = [dated_stack(16, [d], tagged=False, seed=i) for i, d in enumerate(DATES)]
    options = UploadOptions.from_fields({"dates": ",".join(DATES)})

    async def scenario(state: AppState) -> None:
        served = state.repository.get("crops")
        with counting_opens(monkeypatch) as opened:
            got = await state.intake.upload(served, parts, options)
        assert len(opened) == 2
        assert isinstance(got, SyncRequest)
        assert isinstance(got.input, SeriesInput)
        assert got.input.dates == DATES
        assert got.input.series.shape == (16 * 16, 2, 10)
        got.held.release()

    run(tmp_path, (CROPS,), scenario)


def test_a_dated_scene_takes_its_dates_from_the_field_or_the_stacks_tags(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def scenario(state: AppState) -> None:
        served = state.repository.get("crops")
        job = UploadOptions(run_async=True)
        with counting_opens(monkeypatch) as opened:
            tagged = await state.intake.upload(served, [dated_stack(16, DATES)], job)
        assert len(opened) == 1
        assert isinstance(tagged, SceneRequest)
        assert tagged.options.dates == DATES
        assert tagged.resampling is None
        named = UploadOptions.from_fields({"dates": ",".join(DATES), "async": "true"})
        parts = [dated_stack(16, [d], tagged=False) for d in DATES]
        given = await state.intake.upload(served, parts, named)
        assert isinstance(given, SceneRequest)
        assert given.options.dates == DATES
        with pytest.raises(InvalidInput, match="dates are missing"):
            await state.intake.upload(served, [dated_stack(16, DATES, tagged=False)], job)

    run(tmp_path, (CROPS,), scenario)


def test_a_tile_over_the_memory_budget_is_refused_and_the_default_shrinks(
    tmp_path: Path,
) -> None:
    async def scenario(state: AppState) -> None:
        served = state.repository.get("footprints")
        with pytest.raises(PayloadTooLarge, match="tile_size 4096 needs") as refused:
            state.intake.scene_tile(served, 4096, 1)
        fits = refused.value.detail["max_tile_size"]
        assert 16 <= fits < 4096
        assert fits % 16 == 0
        assert state.intake.scene_tile(served, fits, 1) == fits
        shrunk = state.intake.scene_tile(served, None, 1)
        assert shrunk is None or shrunk <= 512

    run(tmp_path, (FOOTPRINTS,), scenario, request_memory_mb=256)


def test_sync_limits_bound_what_an_upload_may_decode_to(tmp_path: Path) -> None:
    async def scenario(state: AppState) -> None:
        limits = state.intake.sync_limits(state.repository.get("crops"))
        assert limits.max_pixels == state.settings.max_sync_series_pixels
        assert limits.max_bytes == int(state.settings.max_upload_mb * 2**20 * DECODE_RATIO)
        assert state.intake.scene_limits.max_pixels == state.settings.max_scene_pixels

    run(tmp_path, (CROPS,), scenario, max_upload_mb=2)


def test_a_json_body_becomes_a_sync_request_for_its_models_task(tmp_path: Path) -> None:
    series = [[1000.0 + 10 * c + t for c in range(10)] for t in range(2)]
    parcels = validate_json({"model": "crops", "dates": DATES, "parcels": [{"series": series}]})
    image = validate_json({"model": "footprints", "image": noise(3, 8).tolist()})

    async def scenario(state: AppState) -> None:
        crops, footprints = state.repository.get("crops"), state.repository.get("footprints")
        got = await state.intake.json(crops, parcels)
        assert isinstance(got.input, SeriesInput)
        assert got.input.ids == ["0"]
        assert got.input.dates == DATES
        got.held.release()
        shown = await state.intake.json(footprints, image)
        assert isinstance(shown.input, RasterInput)
        assert shown.input.data.shape == (3, 8, 8)
        shown.held.release()
        with pytest.raises(InvalidInput, match="takes parcels"):
            await state.intake.json(crops, image)
        with pytest.raises(InvalidInput, match="takes an image"):
            await state.intake.json(footprints, parcels)
        assert state.budget.in_use == 0

    run(tmp_path, (CROPS, FOOTPRINTS), scenario)


def test_a_scene_request_checks_its_stored_files(tmp_path: Path) -> None:
    async def scenario(state: AppState) -> None:
        served = state.repository.get("footprints")
        faint = geotiff(np.random.default_rng(0).integers(0, 2, (3, 96, 96)).astype("uint8"))
        got = await state.intake.upload(served, [faint], UploadOptions(run_async=True))
        assert isinstance(got, SceneRequest)
        path = tmp_path / "input_0.tif"
        path.write_bytes(faint)
        with pytest.raises(UnsupportedRaster):
            got.check([path])
        path.write_bytes(geotiff(noise(3, 96)))
        got.check([path])

    run(tmp_path, (FOOTPRINTS,), scenario)
