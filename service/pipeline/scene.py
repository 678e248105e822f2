"""Whole scenes: tiled inference with blended outputs, written as Cloud-Optimized GeoTIFFs.

A scene is read window by window with rasterio and never decoded whole. Tiles
go through the model's batcher; overlapping outputs (predictions and attention
alike) are blended with a 2-D Hann weight, block of rows by block of rows, and
each finished block is written to tiled GeoTIFFs that become COGs at the end.
What is read, inferred and written per tile is the model's task's
(:mod:`service.pipeline.tasks`); the grid loop is :mod:`service.pipeline.scene_grid`.
"""

from __future__ import annotations

import asyncio
import shutil
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from service.errors import InvalidInput, StorageFailed
from service.jobs.record import JobRecord
from service.jobs.store import JobStore
from service.memory import MemoryBudget
from service.pipeline.inputs import scene_bytes
from service.pipeline.references import References
from service.pipeline.scene_grid import JobCancelled, SceneOptions, SceneWork
from service.pipeline.tasks import task_for
from service.pipeline.units import PlanPass, ScenePart, UnitPass
from service.raster.cog import RasterSink
from service.raster.decode import RasterInfo
from service.runtime.repository import ServedModel

__all__ = ["SceneOptions", "SceneRunner"]


@dataclass(eq=False)
class SceneRunner:
    """Runs one scene job through a served model, tile by tile.

    A job fails (with the reason) rather than let its unfinished outputs pass
    ``max_temp_bytes`` or leave less than ``min_free_bytes`` free.

    Attributes:
        store: where jobs, their inputs and outputs are kept.
        timeout_s: longest one tile may wait for the model.
        in_flight_tiles: a job's tiles read, inferred or written at once.
        max_temp_bytes: most disk a job's unfinished outputs may take (0: no cap).
        min_free_bytes: free disk a job must leave on the job volume.
        cog_level: compression level of the job's COGs (1 to 9).
        cog_stream: write COGs while the tiles come where an output allows it.
        budget: the memory budget requests reserve from (set by the app;
            unbounded alone).
        references: reads jobs' inputs by reference (set by the app; None: none are read).
    """

    store: JobStore
    timeout_s: float
    in_flight_tiles: int = 16
    max_temp_bytes: int = 0
    min_free_bytes: int = 0
    cog_level: int = 1
    cog_stream: bool = True
    budget: MemoryBudget = field(default_factory=lambda: MemoryBudget(2**62, 2**62), init=False)
    references: References | None = field(default=None, init=False)

    async def run(
        self,
        record: JobRecord,
        served: ServedModel,
        progress: Callable[[int, int], None],
        cancelled: Callable[[], bool],
        part: ScenePart | None = None,
    ) -> None:
        """Process the job's scene and fill ``record.layers``; raises on failure.

        With ``part``, only that part of the job runs (see
        :func:`service.pipeline.scene_grid.run_and_finish`); a unit or a plan
        writes no outputs: its sinks go to a hidden scratch folder, dropped after.
        """
        options = SceneOptions(**record.params.get("options", {}))
        # The job's tiles in flight count against the memory budget shared with
        # requests (the tile size was bounded by it when the job was accepted).
        tile = options.tile_size or served.task.scene_tile(served.manifest)
        need = scene_bytes(served, tile, max(1, len(options.dates)), self.in_flight_tiles)
        held = await asyncio.to_thread(self.budget.hold, need, cancelled)
        # The sessions keep their arenas from tile to tile while the job runs.
        arenas = served.hold_arenas()
        folder: Path | None = None
        if isinstance(part, PlanPass | UnitPass):
            # Units of one job may run side by side here: each its own folder.
            name = "plan" if isinstance(part, PlanPass) else f"unit-{part.unit.index}"
            folder = self.store.workspace(record) / f".{name}-{uuid.uuid4().hex[:8]}"
        try:
            if cancelled():
                raise JobCancelled
            work = SceneWork(
                record=record,
                served=served,
                paths=self.inputs(record),
                options=options,
                progress=progress,
                cancelled=cancelled,
                timeout_s=self.timeout_s,
                in_flight_tiles=self.in_flight_tiles,
                sink=lambda file, info, descriptions, **kw: self.sink(
                    record, options, file, info, descriptions, folder=folder, **kw
                ),
                check_disk=self.check_disk,
                part=part,
            )
            await task_for(served.manifest).run_scene(work)
        finally:
            # On a worker thread, not awaited: a cancelled job gives them back too.
            asyncio.get_running_loop().run_in_executor(None, arenas)
            if folder is not None:
                await asyncio.to_thread(shutil.rmtree, folder, True)
            await held.release_async()

    def inputs(self, record: JobRecord) -> list[Path]:
        """The job's input files: stored ones, or its references read where they are."""
        references = record.params.get("references")
        if references:
            if self.references is None:
                raise InvalidInput("this server does not read inputs by reference")
            return [self.references.path(url) for url in references]
        return [self.store.workspace(record) / name for name in record.params["inputs"]]

    def sink(
        self,
        record: JobRecord,
        options: SceneOptions,
        file: str,
        info: RasterInfo,
        descriptions: list[str],
        folder: Path | None = None,
        **kwargs: Any,
    ) -> RasterSink:
        """One output GeoTIFF of a job, in the job's directory (or ``folder``), with its options."""
        kwargs.setdefault("dtype", "uint8" if options.uint8 else "float32")
        kwargs.setdefault("scaled", options.uint8)
        if folder is not None:
            folder.mkdir(parents=True, exist_ok=True)
        return RasterSink(
            (folder or self.store.workspace(record)) / file,
            info.georef,
            descriptions,
            compress="zstd" if options.compress == "zstd" else "deflate",
            level=self.cog_level,
            stream=self.cog_stream,
            **kwargs,
        )

    def check_disk(self, sinks: Mapping[str, RasterSink], finishing: bool = False) -> None:
        """Fail the job if its outputs pass the disk cap or the volume runs short.

        Finishing adds what each output's COG takes beside its unfinished files
        (:meth:`RasterSink.finish_bytes`).
        """
        used = sum(sink.disk_bytes() for sink in sinks.values())
        need = sum(sink.finish_bytes() for sink in sinks.values()) if finishing else 0
        if self.max_temp_bytes and used + need > self.max_temp_bytes:
            raise StorageFailed(
                f"the job's unfinished outputs need more than the {self.max_temp_bytes / 2**20:g} "
                "MB of disk one job may use (ATTNSERVE_SCENE_MAX_TEMP_MB)"
            )
        if self.min_free_bytes and self.store.free_bytes() - need < self.min_free_bytes:
            raise StorageFailed(
                "the job volume is nearly full: the job's outputs would leave less than "
                f"{self.min_free_bytes / 2**20:g} MB free (ATTNSERVE_JOB_MIN_FREE_MB)"
            )
