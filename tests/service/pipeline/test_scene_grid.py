"""The grid loop: every tile blended once, windows flushed in order, cancel and failure."""

from __future__ import annotations

import asyncio
import threading
import time
import weakref
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
from rasterio.crs import CRS
from rasterio.transform import from_origin
from rasterio.windows import Window

from service.jobs.record import JobRecord
from service.pipeline.scene_grid import (
    GridPass,
    JobCancelled,
    SceneOptions,
    SceneWork,
    run_and_finish,
    run_grid,
    to_thread_to_end,
)
from service.raster.cog import RasterSink
from service.raster.decode import RasterInfo
from service.raster.georef import Georeference
from service.runtime.tiling import (
    BlendedWindow,
    StripBlender,
    Tile,
    TileGrid,
    read_bounds,
    reflect_pad,
)
from tests.helpers.blending import summed_scene

SIZE = 100


def _work(tmp_path: Path, cancelled: bool = False) -> tuple[SceneWork, list[tuple[int, int]]]:
    seen: list[tuple[int, int]] = []
    wkt = CRS.from_epsg(32631).to_wkt()
    georef = Georeference(wkt, tuple(from_origin(500_000, 4_000_000, 10, 10))[:6], SIZE, SIZE)

    def sink(file: str, info: RasterInfo, descriptions: list[str], **kw: Any) -> RasterSink:
        return RasterSink(tmp_path / file, georef, descriptions, **kw)

    def check_disk(sinks: Mapping[str, RasterSink], finishing: bool) -> None:
        pass

    work = SceneWork(
        record=JobRecord("x" * 24, {}, "raster", 0.0, 0.0),
        served=None,  # type: ignore[arg-type]  # the loop never looks at the model
        paths=[],
        options=SceneOptions(),
        progress=lambda done, total: seen.append((done, total)),
        cancelled=lambda: cancelled,
        timeout_s=10.0,
        in_flight_tiles=3,
        sink=sink,
        check_disk=check_disk,
    )
    return work, seen


def _read(tile: Tile) -> tuple[np.ndarray, np.ndarray] | None:
    if tile.y == 0 and tile.x == 0:
        return None  # nothing to predict in the first tile
    return np.full((1, tile.size, tile.size), tile.y + tile.x, np.float32), np.ones(
        (tile.size, tile.size), bool
    )


async def _ones(tile: Tile, data: np.ndarray, valid: np.ndarray) -> np.ndarray:
    await asyncio.sleep(0)
    return np.ones((1, tile.size, tile.size), np.float32)


def test_every_window_is_flushed_once_in_order_and_progress_counts_every_tile(
    tmp_path: Path,
) -> None:
    work, seen = _work(tmp_path)
    grid = TileGrid(SIZE, SIZE, 40, 8)
    blender = StripBlender(grid, 1, columns=32)
    out = np.full((SIZE, SIZE), np.nan, np.float32)
    flushed: list[tuple[int, int]] = []

    def flush(first: int, col: int, block: np.ndarray) -> None:
        window = out[first : first + block.shape[1], col : col + block.shape[2]]
        assert np.isnan(window).all()  # each pixel once
        window[:] = block[0]
        flushed.append((first, col))

    asyncio.run(run_grid(work, GridPass(grid, blender, _read, _ones, flush, {})))
    # Row groups top to bottom, each left to right in windows of 32 columns.
    assert flushed == sorted(flushed)
    assert {col for _, col in flushed} == {0, 32, 64, 96}
    assert seen == [(i, len(grid)) for i in range(1, len(grid) + 1)]
    # Blending ones gives ones; where only the skipped tile reached, no data.
    assert np.isnan(out[:20, :20]).all()
    assert np.allclose(out[40:], 1.0)
    assert np.allclose(out[:, 40:], 1.0)


def test_tiles_inferred_but_not_blended_never_outnumber_the_tiles_in_flight(
    tmp_path: Path,
) -> None:
    # A wide scene: a grid row of 12 tiles, 3 tiles in flight.
    work, _ = _work(tmp_path)
    grid = TileGrid(SIZE, 12 * 32 + 8, 40, 8)
    waiting: set[tuple[int, int]] = set()
    most = 0

    async def infer(tile: Tile, data: np.ndarray, valid: np.ndarray) -> np.ndarray:
        nonlocal most
        await asyncio.sleep(0)
        waiting.add((tile.row, tile.col))
        most = max(most, len(waiting))
        return np.ones((1, tile.size, tile.size), np.float32)

    class Counting(StripBlender):
        def add(self, tile: Tile, outputs: np.ndarray | None) -> None:
            waiting.discard((tile.row, tile.col))
            super().add(tile, outputs)

    asyncio.run(
        run_grid(work, GridPass(grid, Counting(grid, 1), _read, infer, lambda *a: None, {}))
    )
    assert not waiting
    assert most <= work.in_flight_tiles


def test_a_flushed_block_is_let_go_before_the_next_is_made(tmp_path: Path) -> None:
    work, _ = _work(tmp_path)
    grid = TileGrid(SIZE, SIZE, 40, 8)
    made: list[weakref.ref[np.ndarray]] = []

    class Watching(StripBlender):
        def pop_final(self) -> Iterator[BlendedWindow]:
            for first, col, block in super().pop_final():
                assert all(ref() is None for ref in made)  # blocks written are gone
                made.append(weakref.ref(block))
                yield first, col, block

    asyncio.run(
        run_grid(work, GridPass(grid, Watching(grid, 1, 32), _read, _ones, lambda *a: None, {}))
    )
    assert len(made) == len(grid.row_groups()) * 4


def test_a_cancelled_job_stops_before_reading(tmp_path: Path) -> None:
    work, seen = _work(tmp_path, cancelled=True)
    grid = TileGrid(SIZE, SIZE, 40, 8)
    nothing = GridPass(grid, StripBlender(grid, 1), _read, _ones, lambda *a: None, {})
    with pytest.raises(JobCancelled):
        asyncio.run(run_grid(work, nothing))
    assert seen == []


def test_a_job_cancelled_mid_read_returns_only_once_the_read_is_over(tmp_path: Path) -> None:
    # The caller closes its datasets as soon as the pass returns: a read still
    # running on its thread then read freed memory (the server crashed).
    work, _ = _work(tmp_path)
    grid = TileGrid(SIZE, SIZE, 40, 8)
    reading = threading.Event()
    reads_running = [0]

    def slow_read(tile: Tile) -> tuple[np.ndarray, np.ndarray] | None:
        reads_running[0] += 1
        reading.set()
        time.sleep(0.3)
        reads_running[0] -= 1
        return _read(tile)

    slow = GridPass(grid, StripBlender(grid, 1), slow_read, _ones, lambda *a: None, {})

    async def cancel_mid_read() -> int:
        task = asyncio.ensure_future(run_grid(work, slow))
        await asyncio.to_thread(reading.wait, 5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return reads_running[0]

    assert asyncio.run(cancel_mid_read()) == 0


def test_to_thread_to_end_holds_a_cancel_until_the_call_returns() -> None:
    done = threading.Event()

    def call() -> str:
        time.sleep(0.2)
        done.set()
        return "read"

    async def main() -> tuple[bool, bool]:
        task = asyncio.ensure_future(to_thread_to_end(call))
        await asyncio.sleep(0.05)
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            return True, done.is_set()
        return False, done.is_set()

    assert asyncio.run(main()) == (True, True)
    assert asyncio.run(to_thread_to_end(lambda: 7)) == 7


def test_a_failing_tile_drops_the_unfinished_outputs(tmp_path: Path) -> None:
    work, _ = _work(tmp_path)
    grid = TileGrid(SIZE, SIZE, 40, 8)
    sinks = {"prediction": work.sink("prediction.tif", None, ["p"])}  # type: ignore[arg-type]

    async def broken(tile: Tile, data: np.ndarray, valid: np.ndarray) -> np.ndarray:
        raise RuntimeError("the model failed")

    with pytest.raises(RuntimeError):
        asyncio.run(
            run_and_finish(
                work,
                GridPass(
                    grid,
                    StripBlender(grid, 1),
                    _read,
                    broken,
                    lambda first, col, block: sinks["prediction"].write(first, block, col),
                    sinks,
                ),
                lambda: [s.finish() for s in sinks.values()],
            )
        )
    assert not (tmp_path / "prediction.tif").exists()
    assert not list(tmp_path.iterdir())


def test_a_real_geotiff_blends_into_its_cog_as_whole_scene_sums_do(
    tmp_path: Path, shared_data: Path
) -> None:
    # Real imagery, 700 x 900 pixels of it: tiles of 256 overlapping by 64 with
    # a snapped last row and column. Each tile says something a little
    # different, so every seam's Hann weights matter.
    with rasterio.open(shared_data / "cogeo.tif") as src:
        image = src.read(window=Window(50, 100, 900, 700)).astype(np.float32) / 255
    work, _ = _work(tmp_path)
    transform = tuple(from_origin(500_000, 4_000_000, 10, 10))[:6]
    georef = Georeference(CRS.from_epsg(32631).to_wkt(), transform, 900, 700)
    grid = TileGrid(700, 900, 256, 64)
    outputs: dict[tuple[int, int], np.ndarray | None] = {}

    def read(tile: Tile) -> tuple[np.ndarray, np.ndarray] | None:
        if (tile.row, tile.col) == (1, 1):
            return None  # skipped: its pixels get the neighbours' outputs
        y0, y1, x0, x1 = read_bounds(tile, 700, 900)
        data = reflect_pad(image[:, y0:y1, x0:x1], tile, 700, 900)
        return data, np.ones(data.shape[1:], bool)

    async def infer(tile: Tile, data: np.ndarray, valid: np.ndarray) -> np.ndarray:
        outputs[tile.row, tile.col] = data * (1 + 0.01 * (tile.row * 7 + tile.col))
        return outputs[tile.row, tile.col]

    sink = RasterSink(tmp_path / "blended.tif", georef, ["r", "g", "b"])

    def flush(first: int, col: int, block: np.ndarray) -> None:
        sink.write(first, block, col)

    grid_pass = GridPass(grid, StripBlender(grid, 3), read, infer, flush, {"blended": sink})
    asyncio.run(run_grid(work, grid_pass))
    outputs.setdefault((1, 1), None)
    want = summed_scene(grid, 3, outputs)
    with rasterio.open(sink.finish()) as cog:
        got = cog.read()
    exact = grid.block_rows(grid.row_groups()[-1].start)[0]
    np.testing.assert_array_equal(got[:, :exact], want[:, :exact])
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
