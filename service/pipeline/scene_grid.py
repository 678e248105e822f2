"""The grid loop of a scene job: tiles read, inferred and blended in the grid's blend order."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

import numpy as np

from service.jobs.record import JobRecord
from service.pipeline.threads import thread_future
from service.pipeline.units import (
    FinishPass,
    GridPlanned,
    PlanPass,
    ScenePart,
    UnitBlender,
    UnitPass,
    UnitStored,
    blend_units,
)
from service.raster.cog import RasterSink
from service.raster.decode import RasterInfo
from service.runtime.repository import ServedModel
from service.runtime.tiling import StripBlender, Tile, TileGrid

# How often a job waiting on its tiles looks whether it was cancelled.
CANCEL_POLL_S = 0.25

T = TypeVar("T")


class JobCancelled(Exception):
    """The job was cancelled while running."""


@dataclass
class SceneOptions:
    """Per-job tiling and output options (stored with the job, so it can resume)."""

    tile_size: int | None = None
    overlap: int | None = None
    uint8: bool = False
    compress: str = "deflate"
    dates: list[str] = field(default_factory=list)
    # Class maps: the request's minimum confidence (None: the manifest's).
    min_confidence: float | None = None
    # Chip classifiers: pixels between chips (None: the chip's side).
    chip_stride: int | None = None

    def to_json(self) -> dict[str, Any]:
        """Plain data for the job record."""
        return dict(self.__dict__)


class SinkFactory(Protocol):
    """Makes one of a job's output GeoTIFFs (see :meth:`SceneRunner.sink`)."""

    def __call__(
        self, file: str, info: RasterInfo, descriptions: list[str], **kwargs: Any
    ) -> RasterSink: ...


@dataclass
class SceneWork:
    """One scene job's run as its task sees it: inputs, options and the runner's services.

    Attributes:
        record: the job; its task fills ``layers``, ``series`` and ``tiling``.
        served: the model.
        paths: the job's input files, in upload order.
        options: the job's tiling and output options.
        progress: called with ``(tiles done, tiles in all)``.
        cancelled: whether the job should stop.
        timeout_s: each tile's deadline in the batcher.
        in_flight_tiles: tiles read ahead of the batcher at most.
        sink: makes an output GeoTIFF of the job.
        check_disk: fails the job when its outputs outgrow the disk
            (``finishing``: counting what finishing adds).
        part: which part of the job this run does (a shared queue's unit, its
            finishing, or planning); None: the whole job.
    """

    record: JobRecord
    served: ServedModel
    paths: list[Path]
    options: SceneOptions
    progress: Callable[[int, int], None]
    cancelled: Callable[[], bool]
    timeout_s: float
    in_flight_tiles: int
    sink: SinkFactory
    check_disk: Callable[[Mapping[str, RasterSink], bool], None]
    part: ScenePart | None = None


Read = Callable[[Tile], "tuple[np.ndarray, np.ndarray] | None"]
Infer = Callable[[Tile, np.ndarray, np.ndarray], Awaitable[np.ndarray]]
Flush = Callable[[int, int, np.ndarray], None]


async def to_thread_to_end(call: Callable[..., T], *args: Any) -> T:
    """``asyncio.to_thread(call, *args)``, whose cancellation waits for ``call`` to return.

    A thread cannot be stopped: a cancelled plain ``to_thread`` lets its caller
    go on, close the dataset the call is still reading or abort the output it
    is writing, and the thread then reads freed memory (a job deleted while its
    first tiles were read crashed the server: "corrupted double-linked list",
    segmentation fault). Here the cancel is held back until the call is over,
    then raised.
    """
    future = thread_future(call, *args)
    cancelled = False
    while not future.done():
        try:
            await asyncio.wait({future})
        except asyncio.CancelledError:
            cancelled = True
    if cancelled:
        if not future.cancelled():
            future.exception()  # retrieved: the cancel wins over the call's own error
        raise asyncio.CancelledError
    return future.result()


@dataclass
class GridPass:
    """One pass over a scene's tiles: the grid, where they blend, and what each tile goes through.

    ``read`` runs on one worker thread at a time (None: nothing to infer in the
    tile); ``infer`` on the event loop; ``flush`` gets each finished window
    ``(first row, first column, (layers, rows, columns))``, on a worker thread:
    a row group's windows left to right, groups top to bottom; ``sinks`` are
    the outputs they go to.
    ``sums`` are totals ``infer`` adds to over tiles (arrays, changed in place),
    added up over the units of a job shared through a queue.
    """

    grid: TileGrid
    blender: StripBlender
    read: Read
    infer: Infer
    flush: Flush
    sinks: Mapping[str, RasterSink]
    sums: dict[str, np.ndarray] = field(default_factory=dict)


async def run_grid(
    work: SceneWork,
    grid_pass: GridPass,
    rows: range | None = None,
    blender: StripBlender | UnitBlender | None = None,
    cols: range | None = None,
) -> None:
    """Read, infer and blend the tiles of the pass's grid, flushing finished windows in order.

    ``rows`` and ``cols`` limit the run to those tiles, blended by ``blender`` (a unit's).
    """
    grid, read, infer = grid_pass.grid, grid_pass.read, grid_pass.infer
    blender = blender or grid_pass.blender
    flush, sinks = grid_pass.flush, grid_pass.sinks
    order = grid.blend_order(rows, cols)
    total = sum(map(len, order))
    done = 0
    gate = asyncio.Semaphore(work.in_flight_tiles)
    # One reader thread keeps GDAL's dataset handle single-threaded while the
    # batcher's thread runs inference: reading and inference overlap.
    read_lock = asyncio.Lock()

    async def one(tile: Tile) -> tuple[Tile, np.ndarray | None]:
        # The slot is held until the tile is blended, not only inferred: a
        # 16384-wide scene's next row of outputs (37 tiles) waited otherwise.
        # Tiles take slots in blend order (the semaphore is first come, first served).
        await gate.acquire()
        try:
            if work.cancelled():
                raise JobCancelled
            async with read_lock:
                got = await to_thread_to_end(read, tile)
            if got is None:
                return tile, None
            return tile, await infer(tile, *got)
        except BaseException:
            gate.release()
            raise

    pending: dict[int, list[asyncio.Task[tuple[Tile, np.ndarray | None]]]] = {}
    # Row groups are started one ahead, so the next group's reads overlap this
    # group's inference; blending stays in order, on this task.
    next_group = 0

    def start_group(index: int) -> None:
        pending[index] = [asyncio.ensure_future(one(t)) for t in order[index]]

    async def landed(
        task: asyncio.Task[tuple[Tile, np.ndarray | None]],
    ) -> tuple[Tile, np.ndarray | None]:
        # A cancel stops the job within a moment, not after the tiles in flight
        # (queued tiles on a busy CPU can outlast the tile deadline).
        while True:
            finished, _ = await asyncio.wait({task}, timeout=CANCEL_POLL_S)
            if finished:
                return task.result()
            if work.cancelled():
                raise JobCancelled

    def flush_next(windows: Iterator[tuple[int, int, np.ndarray]]) -> bool:
        # Each window is made, written and let go before the next is made.
        got = next(windows, None)
        if got is None:
            return False
        flush(*got)
        return True

    current: list[asyncio.Task[tuple[Tile, np.ndarray | None]]] = []
    try:
        for index in range(len(order)):
            while next_group <= min(index + 1, len(order) - 1):
                start_group(next_group)
                next_group += 1
            current = pending.pop(index)
            while current:
                # Blended tiles' outputs are let go (a task keeps its result).
                tile, out = await landed(current[0])
                current.pop(0)
                # Blending on a worker thread, one call at a time.
                await to_thread_to_end(blender.add, tile, out)
                gate.release()
                done += 1
                work.progress(done, total)
                windows = blender.pop_final()
                if await to_thread_to_end(flush_next, windows):
                    while await to_thread_to_end(flush_next, windows):
                        pass
                    await to_thread_to_end(work.check_disk, sinks, False)
    finally:
        leftover = [*current, *(t for tasks in pending.values() for t in tasks)]
        for task in leftover:
            task.cancel()
        await asyncio.gather(*leftover, return_exceptions=True)


async def run_and_finish(work: SceneWork, grid_pass: GridPass, finish: Callable[[], T]) -> T:
    """:func:`run_grid`, then ``finish`` on a worker thread; unfinished outputs go on failure.

    A run of part of a job (``work.part``) plans (raises :class:`GridPlanned`),
    runs one unit's tiles and stores their partial sums (raises
    :class:`UnitStored`), or blends every unit's sums into the outputs and
    finishes them as a whole-scene run does.
    """
    part = work.part
    if isinstance(part, PlanPass):
        await abort(grid_pass.sinks)
        raise GridPlanned(grid_pass.grid)
    try:
        if isinstance(part, UnitPass):
            await run_unit(work, grid_pass, part)
        elif isinstance(part, FinishPass):
            await blend_stored(work, grid_pass, part)
        else:
            await run_grid(work, grid_pass)
        await to_thread_to_end(work.check_disk, grid_pass.sinks, True)
        return await to_thread_to_end(finish)
    except BaseException:
        await abort(grid_pass.sinks)
        raise


async def run_unit(work: SceneWork, grid_pass: GridPass, part: UnitPass) -> None:
    """Run one unit's tiles into its partial sums and store them; raises :class:`UnitStored`."""
    unit = part.unit
    blender = UnitBlender(grid_pass.grid, unit, grid_pass.blender.layers)
    rows = range(unit.first, unit.stop)
    await run_grid(work, grid_pass, rows, blender, unit.cols(grid_pass.grid))
    blender.partial.sums = {k: np.asarray(v).copy() for k, v in grid_pass.sums.items()}
    await to_thread_to_end(part.save, blender.partial)
    raise UnitStored


async def blend_stored(work: SceneWork, grid_pass: GridPass, part: FinishPass) -> None:
    """Flush the windows that the units' stored partial sums blend into, in order."""
    blocks = blend_units(grid_pass.grid, part.units, part.load, grid_pass.sums)
    while True:
        if work.cancelled():
            raise JobCancelled
        got = await to_thread_to_end(next, blocks, None)
        if got is None:
            return
        first, col, block = got
        await to_thread_to_end(grid_pass.flush, first, col, block)
        await to_thread_to_end(work.check_disk, grid_pass.sinks, False)


async def abort(sinks: Mapping[str, RasterSink]) -> None:
    """Drop unfinished outputs on a worker thread: closing large files blocks for long."""

    def drop() -> None:
        for sink in sinks.values():
            sink.abort()

    dropping = asyncio.ensure_future(asyncio.to_thread(drop))
    # A second cancellation must not leave the files behind: the thread goes on.
    with contextlib.suppress(BaseException):
        await asyncio.shield(dropping)
