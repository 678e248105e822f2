"""Footprints: bounded in polygons and time, off the event loop, cached per parameters."""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio.crs

from service.errors import InvalidInput, Overloaded
from service.jobs.local import LocalJobStore
from service.jobs.record import JobRecord, Layer
from service.jobs.store import JobStore
from service.pipeline.footprints import FootprintLimits, FootprintService, vector_format
from service.raster.footprints import FootprintOptions

MODEL = {"name": "footprints", "version": "1", "task": "segmentation"}


def _job(store: JobStore, probability: np.ndarray) -> JobRecord:
    """A segmentation job as the runner stores it: probability and one attention map."""
    height, width = probability.shape
    record = store.new_record(MODEL, "raster", None)
    record.georef = {
        "crs": rasterio.crs.CRS.from_epsg(32631).to_wkt(),
        "transform": [0.5, 0.0, 500000.0, 0.0, -0.5, 5000000.0],
        "width": width,
        "height": height,
    }
    record.layers = [
        Layer("building", "prediction", "probability", [height, width], "float32"),
        Layer("gate_1", "attention", "spatial", [height, width], "float32"),
    ]
    store.save(record, {"building": probability, "gate_1": np.full_like(probability, 0.3)})
    return record


def _noise(side: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((side, side)).astype(np.float32)


def _squares(side: int) -> np.ndarray:
    """Four 40 x 40 buildings on empty ground."""
    prob = np.full((side, side), 0.05, np.float32)
    for y, x in ((20, 20), (20, 120), (120, 20), (120, 120)):
        prob[y : y + 40, x : x + 40] = 0.9
    return prob


async def _with_loop_lag(work: asyncio.Future[bytes] | asyncio.Task[bytes]) -> float:
    """The event loop's longest stall while ``work`` runs, in seconds."""
    worst = 0.0
    while not work.done():
        began = time.perf_counter()
        await asyncio.sleep(0.01)
        worst = max(worst, time.perf_counter() - began - 0.01)
    return worst


def test_too_many_polygons_is_a_clear_422_and_the_loop_stays_free(tmp_path: Path) -> None:
    store = LocalJobStore(tmp_path, ttl_s=60, fsync=False)
    job = _job(store, _noise(256))
    service = FootprintService(store, FootprintLimits(max_features=500, timeout_s=120))
    options = FootprintOptions(threshold=0.5, min_area_px=0, simplify_px=0)

    async def run() -> tuple[BaseException | None, float]:
        work = asyncio.ensure_future(service.geojson(job, options))
        lag = await _with_loop_lag(work)
        return work.exception(), lag

    error, lag = asyncio.run(run())
    assert isinstance(error, InvalidInput)
    assert error.message == (
        "more than 500 polygons at these parameters: raise threshold or min_area_px"
    )
    assert lag < 0.5


def test_an_extraction_past_its_deadline_is_stopped_with_a_clear_422(tmp_path: Path) -> None:
    store = LocalJobStore(tmp_path, ttl_s=60, fsync=False)
    # GDAL's polygonize alone takes seconds on this much noise (allowed as many
    # polygons as it has, so that the deadline and not the count stops it).
    job = _job(store, _noise(2048))
    service = FootprintService(store, FootprintLimits(max_features=10**7, timeout_s=0.5))
    options = FootprintOptions(threshold=0.5, min_area_px=0, simplify_px=0)

    async def run() -> tuple[BaseException | None, float, float]:
        began = time.perf_counter()
        work = asyncio.ensure_future(service.geojson(job, options))
        lag = await _with_loop_lag(work)
        return work.exception(), lag, time.perf_counter() - began

    error, lag, took = asyncio.run(run())
    assert isinstance(error, InvalidInput)
    assert "took too long at these parameters: raise threshold or min_area_px" in error.message
    assert took < 10
    assert lag < 0.5


def test_answers_are_shared_cached_per_parameters_and_the_cache_is_bounded(
    tmp_path: Path,
) -> None:
    store = LocalJobStore(tmp_path, ttl_s=60, fsync=False)
    job = _job(store, _squares(200))
    service = FootprintService(store, FootprintLimits(cache_bytes=4000))

    async def run() -> list[bytes]:
        same = FootprintOptions(threshold=0.5, min_area_px=0)
        answers = await asyncio.gather(*(service.geojson(job, same) for _ in range(4)))
        assert service.extractions == 1  # one extraction for the four requests
        again = await service.geojson(job, same)
        assert service.extractions == 1
        other = await service.geojson(job, FootprintOptions(threshold=0.5, min_area_px=2000))
        assert service.extractions == 2
        return [*answers, again, other]

    answers = asyncio.run(run())
    assert len(set(answers[:5])) == 1
    collection = json.loads(answers[0])
    assert len(collection["features"]) == 4
    assert all(f["properties"]["mean_probability"] == 0.9 for f in collection["features"])
    assert json.loads(answers[5])["features"] == []
    cached = sum(len(data) for data in service._cache.values())
    assert 0 < cached <= 4000


def test_extractions_past_the_waiting_room_are_refused(tmp_path: Path) -> None:
    store = LocalJobStore(tmp_path, ttl_s=60, fsync=False)
    job = _job(store, _squares(200))
    service = FootprintService(store, FootprintLimits(workers=1, max_waiting=1, timeout_s=20))

    async def run() -> list[BaseException | bytes]:
        calls = [service.geojson(job, FootprintOptions(threshold=t)) for t in (0.3, 0.4, 0.5)]
        return await asyncio.gather(*calls, return_exceptions=True)

    first, second, third = asyncio.run(run())
    assert isinstance(first, bytes)
    assert isinstance(second, bytes)
    assert isinstance(third, Overloaded)
    assert "retry shortly" in third.message


@pytest.mark.slow
def test_six_noisy_extractions_at_once_leave_the_loop_free_and_end_in_two_deadlines(
    tmp_path: Path,
) -> None:
    store = LocalJobStore(tmp_path, ttl_s=60, fsync=False)
    job = _job(store, _noise(2048))
    service = FootprintService(store, FootprintLimits(timeout_s=10, max_waiting=8))

    async def run() -> tuple[list[BaseException | bytes], float, float]:
        began = time.perf_counter()
        work = asyncio.gather(
            *(
                service.geojson(job, FootprintOptions(threshold=t, min_area_px=0, simplify_px=0))
                for t in (0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
            ),
            return_exceptions=True,
        )
        lag = await _with_loop_lag(work)
        return work.result(), lag, time.perf_counter() - began

    results, lag, took = asyncio.run(run())
    assert lag < 1.0
    assert took < 2 * 10 + 5
    for result in results:
        assert isinstance(result, bytes | InvalidInput | Overloaded), result


def test_files_are_kept_once_per_format_and_forgotten_with_their_job(tmp_path: Path) -> None:
    store = LocalJobStore(tmp_path, ttl_s=60, fsync=False)
    job = _job(store, _squares(200))
    service = FootprintService(store, FootprintLimits())
    options = FootprintOptions(threshold=0.5, min_area_px=0)
    gpkg, fgb = vector_format("gpkg", None), vector_format("fgb", None)

    async def run() -> tuple[bytes, bytes]:
        as_gpkg = await service.download(job, options, gpkg)
        assert await service.download(job, options, gpkg) is as_gpkg  # kept
        as_fgb = await service.download(job, options, fgb)
        assert service.extractions == 1  # both encode the one GeoJSON answer
        return as_gpkg, as_fgb

    as_gpkg, as_fgb = asyncio.run(run())
    assert as_gpkg.startswith(b"SQLite format 3\x00")
    assert as_fgb.startswith(b"fgb\x03")
    assert len(service._cache) == 3
    service.forget(job.id)
    assert not service._cache


@pytest.mark.slow
def test_files_of_many_polygons_are_encoded_off_the_loop(tmp_path: Path) -> None:
    store = LocalJobStore(tmp_path, ttl_s=60, fsync=False)
    # About 13,600 polygons: encoding them in the server's process stalled its loop 0.18 s.
    job = _job(store, _noise(448))
    service = FootprintService(store, FootprintLimits(timeout_s=60))
    options = FootprintOptions(threshold=0.5, min_area_px=0, simplify_px=0)

    async def run() -> tuple[int, float]:
        features = len(json.loads(await service.geojson(job, options))["features"])
        work = asyncio.ensure_future(service.download(job, options, vector_format("gpkg", None)))
        return features, await _with_loop_lag(work)

    features, lag = asyncio.run(run())
    assert features > 10_000
    assert lag < 0.08, (features, lag)


class _WatchedPipe:
    """The receiving end of a pipe that counts the threads inside it when it is closed.

    ``poll`` lingers after its answer, as a busy machine's thread may.
    """

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.inside = 0
        self.closed_with: list[int] = []

    def poll(self, timeout: float) -> bool:
        self.inside += 1
        try:
            return bool(self.conn.poll(timeout))
        finally:
            time.sleep(0.5)
            self.inside -= 1

    def recv(self) -> Any:
        return self.conn.recv()

    def close(self) -> None:
        self.closed_with.append(self.inside)
        self.conn.close()


def test_an_extraction_cancelled_by_a_shutdown_stops_its_worker_and_closes_the_pipe_last(
    tmp_path: Path,
) -> None:
    store = LocalJobStore(tmp_path, ttl_s=60, fsync=False)
    job = _job(store, _noise(2048))  # seconds of polygonising
    service = FootprintService(store, FootprintLimits(max_features=10**7, timeout_s=60))
    context = service._context
    pipes: list[_WatchedPipe] = []

    class Context:
        Process = context.Process

        @staticmethod
        def Pipe(duplex: bool) -> tuple[_WatchedPipe, Any]:  # noqa: N802 (multiprocessing's name)
            receiver, sender = context.Pipe(duplex=duplex)
            pipes.append(_WatchedPipe(receiver))
            return pipes[-1], sender

    service._context = Context()  # type: ignore[assignment]
    options = FootprintOptions(threshold=0.5, min_area_px=0, simplify_px=0)

    async def run() -> float:
        work = asyncio.ensure_future(service.geojson(job, options))
        while not pipes or not pipes[0].inside:
            await asyncio.sleep(0.01)
        flights = list(service._flights.values())
        began = time.perf_counter()
        # As the event loop's shutdown does: every task is cancelled, at once.
        for task in asyncio.all_tasks() - {asyncio.current_task()}:
            task.cancel()
        await asyncio.wait([work, *flights])
        assert all(task.cancelled() for task in (work, *flights))
        return time.perf_counter() - began

    took = asyncio.run(run())
    assert took < 10  # the worker was killed, not waited for
    assert pipes[0].closed_with == [0]
    assert not [p for p in multiprocessing.active_children() if p.name.startswith("footprints")]
