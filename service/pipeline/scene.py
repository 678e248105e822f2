"""Whole scenes: tiled inference with blended outputs, written as Cloud-Optimized GeoTIFFs.

A scene is read window by window with rasterio and never decoded whole. Tiles
go through the model's batcher; overlapping outputs (predictions and attention
alike) are blended with a 2-D Hann weight, block of rows by block of rows, and
each finished block is written to tiled GeoTIFFs that become COGs at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio.enums import MaskFlags
from rasterio.errors import NotGeoreferencedWarning, RasterioError
from rasterio.io import DatasetReader
from rasterio.windows import Window

from service.errors import InvalidInput, InvalidRaster, StorageFailed, UnsupportedRaster
from service.jobs.record import JobRecord
from service.jobs.store import JobStore
from service.memory import MemoryBudget
from service.pipeline.inputs import scene_bytes
from service.raster.cog import RasterSink
from service.raster.decode import (
    HARDENED_GDAL,
    UNREADABLE,
    RasterInfo,
    RasterLimits,
    check_limits,
    describe,
)
from service.raster.resample import ModelGridSource, Resampling, RowsBack, input_valid_rows
from service.runtime.manifest import Manifest
from service.runtime.repository import ServedModel
from service.runtime.segmentation import SegmentationTask, band_means, context_px, upsample
from service.runtime.temporal import TemporalTask, days_from_dates
from service.runtime.tiling import StripBlender, Tile, TileGrid, read_bounds, reflect_pad
from service.runtime.validation import check_layout, check_values

log = logging.getLogger(__name__)

CLASS_NODATA = 255


class JobCancelled(Exception):
    """The job was cancelled while running."""


# How often a job waiting on its tiles looks whether it was cancelled.
CANCEL_POLL_S = 0.25


@dataclass
class SceneOptions:
    """Per-job tiling and output options (stored with the job, so it can resume)."""

    tile_size: int | None = None
    overlap: int | None = None
    uint8: bool = False
    compress: str = "deflate"
    dates: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """Plain data for the job record."""
        return dict(self.__dict__)


@contextlib.contextmanager
def open_scene(path: Path) -> Iterator[DatasetReader]:
    """Open a scene file we wrote ourselves, GTiff driver only, hardened GDAL."""
    with warnings.catch_warnings(), rasterio.Env(**HARDENED_GDAL):
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        try:
            dataset = rasterio.open(path, driver="GTiff")
        except RasterioError:
            raise InvalidRaster("the uploaded file could not be opened as a GeoTIFF") from None
        with dataset:
            yield dataset


def _all_valid(dataset: DatasetReader) -> bool:
    return all(flags == [MaskFlags.all_valid] for flags in dataset.mask_flag_enums)


# The value-scale check reads a grid of small windows: at most this many blocks
# of a file without overviews. (A decimated read of a whole 8192 x 8192 JPEG
# scene decoded all its 256 blocks: 6.2 s before the job was accepted.)
SAMPLE_GRID = 4
SAMPLE_SIDE = 64
DECIMATED_MAX_BYTES = 64 * 2**20


def _sample_values(ds: DatasetReader, info: RasterInfo) -> np.ndarray:
    """Valid values from across a scene, for the value-scale check.

    From the overviews where the file has them, else from a grid of small
    windows; a scene whose windows all miss its data is read decimated whole.
    """

    def valid_values(data: np.ndarray, valid: np.ndarray | None) -> np.ndarray:
        values = data if valid is None else data[:, valid]
        values = values[np.isfinite(values)] if values.dtype.kind == "f" else values
        return values.reshape(-1)

    all_valid = _all_valid(ds)

    def decimated() -> np.ndarray:
        scale = max(1, max(info.width, info.height) // 256)
        shape = (info.count, max(1, info.height // scale), max(1, info.width // scale))
        valid = None if all_valid else ds.dataset_mask(out_shape=shape[1:]) > 0
        return valid_values(ds.read(list(info.indexes) or None, out_shape=shape), valid)

    small = info.width * info.height <= (SAMPLE_GRID * SAMPLE_SIDE) ** 2 * 4
    # A decimated read of a file larger than GDAL's block cache decodes each
    # block once per band (a 512 x 512 stack of 500 float64 bands: minutes).
    if ds.overviews(1) or (small and info.decoded_bytes <= DECIMATED_MAX_BYTES):
        return decimated()
    parts = []
    height, width = min(SAMPLE_SIDE, info.height), min(SAMPLE_SIDE, info.width)
    for row in range(SAMPLE_GRID):
        for col in range(SAMPLE_GRID):
            # Centred in each cell of a SAMPLE_GRID x SAMPLE_GRID grid, inside the image.
            top = (2 * row + 1) * info.height // (2 * SAMPLE_GRID) - height // 2
            left = (2 * col + 1) * info.width // (2 * SAMPLE_GRID) - width // 2
            top = min(max(0, top), info.height - height)
            left = min(max(0, left), info.width - width)
            window = Window(left, top, width, height)
            valid = None if all_valid else ds.dataset_mask(window=window) > 0
            parts.append(valid_values(ds.read(list(info.indexes) or None, window=window), valid))
    values = np.concatenate(parts)
    return values if values.size else decimated()


def check_scene(
    paths: list[Path], manifest: Manifest, limits: RasterLimits, dates: list[str]
) -> list[RasterInfo]:
    """Check scene files before accepting the job: layout, size, georeference, scale.

    Only headers and a sample of values per file are read (:func:`_sample_values`).
    """
    bands = len(manifest.input.bands)
    infos: list[RasterInfo] = []
    for path in paths:
        with open_scene(path) as ds:
            info = describe(ds)
            check_limits(info, limits)
            if manifest.task == "temporal_classification":
                if info.count % bands:
                    check_layout(manifest, info.count, info.dtype)
            else:
                check_layout(manifest, info.count, info.dtype)
            try:
                values = _sample_values(ds, info)
            except RasterioError:
                raise InvalidRaster(UNREADABLE) from None
            check_values(manifest, values)
            infos.append(info)
    first = infos[0]
    for other in infos[1:]:
        if other.georef != first.georef:
            raise UnsupportedRaster("all dated images must share one size, CRS and transform")
    if manifest.task == "temporal_classification":
        t = sum(i.count for i in infos) // bands
        check_layout(manifest, bands, first.dtype, dates=t)
        if len(dates) != t:
            raise InvalidInput(f"{len(dates)} dates given for {t} dated images of {bands} bands")
    return infos


class SceneRunner:
    """Runs one scene job through a served model, tile by tile."""

    def __init__(
        self,
        store: JobStore,
        timeout_s: float,
        in_flight_tiles: int = 16,
        max_temp_bytes: int = 0,
        min_free_bytes: int = 0,
    ) -> None:
        self.store = store
        self.timeout_s = timeout_s
        self.in_flight_tiles = in_flight_tiles
        # Set by the app to the budget requests reserve from; unbounded alone.
        self.budget = MemoryBudget(2**62, 2**62)
        # A job fails (with the reason) rather than let its unfinished outputs
        # pass max_temp_bytes (0: no cap) or leave less than min_free_bytes free.
        self.max_temp_bytes = max_temp_bytes
        self.min_free_bytes = min_free_bytes

    async def run(
        self,
        record: JobRecord,
        served: ServedModel,
        progress: Callable[[int, int], None],
        cancelled: Callable[[], bool],
    ) -> None:
        """Process the job's scene and fill ``record.layers``; raises on failure."""
        options = SceneOptions(**record.params.get("options", {}))
        # The job's tiles in flight count against the memory budget shared with
        # requests (the tile size was bounded by it when the job was accepted).
        manifest = served.manifest
        default = manifest.input.tile_size or 512 if manifest.task == "segmentation" else 256
        tile = options.tile_size or default
        need = scene_bytes(served, tile, max(1, len(options.dates)), self.in_flight_tiles)
        held = await asyncio.to_thread(self.budget.hold, need, cancelled)
        try:
            if cancelled():
                raise JobCancelled
            await self._run(record, served, options, progress, cancelled)
        finally:
            await held.release_async()

    async def _run(
        self,
        record: JobRecord,
        served: ServedModel,
        options: SceneOptions,
        progress: Callable[[int, int], None],
        cancelled: Callable[[], bool],
    ) -> None:
        workspace = self.store.workspace(record)
        paths = [workspace / name for name in record.params["inputs"]]
        if served.manifest.task == "segmentation":
            await self._segmentation(record, served, paths[0], options, progress, cancelled)
        else:
            await self._temporal(record, served, paths, options, progress, cancelled)

    async def _segmentation(
        self,
        record: JobRecord,
        served: ServedModel,
        path: Path,
        options: SceneOptions,
        progress: Callable[[int, int], None],
        cancelled: Callable[[], bool],
    ) -> None:
        manifest = served.manifest
        task = served.task
        assert isinstance(task, SegmentationTask)
        spatial = [o for o in manifest.outputs if len(o.shape) == 4]
        channel = [o for o in manifest.outputs if o.kind == "channel"]
        multiple = manifest.input.size_multiple or 1
        size = _round_up(options.tile_size or manifest.input.tile_size or 512, multiple)
        overlap = (
            options.overlap if options.overlap is not None else (manifest.input.tile_overlap or 0)
        )
        fill = np.float32(manifest.input.normalization.mean[0])
        halo = context_px(manifest)
        with open_scene(path) as ds, open_scene(path) as rows_ds:
            info = describe(ds)
            # Tiles are read and inferred on the model's grid (its resolution),
            # outputs written on the input's; rows_ds reads the input's validity
            # for them off the reader thread.
            plan = Resampling.from_json(
                record.extra.get("resampling") or {}, info.width, info.height
            )
            tiled = replace(info, width=plan.model_width, height=plan.model_height)
            grid = TileGrid(tiled.height, tiled.width, size, min(overlap, size // 2), halo)
            # Layers blended: every spatial output, then the input's validity.
            blender = StripBlender(grid, len(spatial) + 1)
            channel_sum = {o.name: np.zeros(len(manifest.input.bands)) for o in channel}
            channel_weight = 0.0
            sinks = self._sinks_segmentation(record, info, spatial, options)
            all_valid = _all_valid(ds)
            scene_mean = await asyncio.to_thread(_scene_band_mean, ds, info, all_valid)
            source = ModelGridSource(ds, plan, all_valid) if plan.applied else None
            back = RowsBack(plan) if plan.applied else None

            def read(tile: Tile) -> tuple[np.ndarray, np.ndarray] | None:
                # The model reads the tile with its context; only the tile
                # itself decides whether there is anything to predict.
                window, dy, dx = tile.context(tiled.height, tiled.width)
                return _read_tile(
                    ds, window, tiled, all_valid, core=(dy, dx, tile.size), source=source
                )

            async def infer(tile: Tile, data: np.ndarray, valid: np.ndarray) -> np.ndarray:
                x = np.where(valid[None], data.astype(np.float32), fill)
                out = await task.batcher.submit(task.feed(x, scene_mean), self.timeout_s)
                nonlocal channel_weight
                _, dy, dx = tile.context(tiled.height, tiled.width)
                core = (slice(dy, dy + tile.size), slice(dx, dx + tile.size))
                weight = float(valid[core].mean())
                for o in channel:
                    channel_sum[o.name] += out[o.name][0] * weight
                channel_weight += weight
                h, w = x.shape[1:]
                stack = [
                    upsample(out[o.name][0, 0], o.stride, h, w)[core]
                    if o.stride > 1
                    else out[o.name][0, 0][core]
                    for o in spatial
                ]
                stack.append(valid[core].astype(np.float32))
                return np.stack(stack)

            def write(first: int, values: np.ndarray) -> None:
                sinks["prediction"].write(first, values[:1])
                if len(spatial) > 1:
                    sinks["attention"].write(first, values[1:])

            def flush(first: int, block: np.ndarray) -> None:
                valid = block[-1] > 0.5
                values = block[:-1]
                values[:, ~valid] = np.nan
                if back is None:
                    write(first, values)
                    return
                for row, part in back.push(first, values):
                    # Nodata of the input stays nodata, whatever the model's grid saw.
                    mask = input_valid_rows(rows_ds, row, part.shape[1], all_valid)
                    if mask is not None:
                        part[:, ~mask] = np.nan
                    write(row, part)

            try:
                await self._run_grid(grid, blender, read, infer, flush, progress, cancelled, sinks)
                await asyncio.to_thread(self._check_disk, sinks, True)
                record.layers = await asyncio.to_thread(self._finish, sinks, record, spatial)
            except BaseException:
                await _abort(sinks)
                raise
        for o in channel:
            weights = channel_sum[o.name] / max(channel_weight, 1e-9)
            record.layers.append(
                {
                    "name": o.name,
                    "role": o.role,
                    "kind": o.kind,
                    "shape": [len(weights)],
                    "dtype": "float32",
                    "storage": "inline",
                    "values": [float(v) for v in weights],
                    "bands": list(manifest.input.bands),
                    "description": "per-band weights, averaged over tiles by valid pixels",
                }
            )
        record.extra["tiling"] = {"tile_size": size, "overlap": grid.overlap, "tiles": len(grid)}

    def _sink(
        self,
        record: JobRecord,
        info: RasterInfo,
        file: str,
        descriptions: list[str],
        options: SceneOptions,
        **kwargs: Any,
    ) -> RasterSink:
        kwargs.setdefault("dtype", "uint8" if options.uint8 else "float32")
        kwargs.setdefault("scaled", options.uint8)
        return RasterSink(
            self.store.workspace(record) / file,
            info.georef,
            descriptions,
            compress="zstd" if options.compress == "zstd" else "deflate",
            **kwargs,
        )

    def _sinks_segmentation(
        self, record: JobRecord, info: RasterInfo, spatial: list[Any], options: SceneOptions
    ) -> dict[str, RasterSink]:
        first = spatial[0]
        sinks = {
            "prediction": self._sink(
                record, info, "prediction.tif", [f"{first.name} ({first.kind})"], options
            )
        }
        if len(spatial) > 1:
            descriptions = [f"{o.name} ({o.kind}, level {o.level})" for o in spatial[1:]]
            sinks["attention"] = self._sink(record, info, "attention.tif", descriptions, options)
        return sinks

    def _finish(
        self, sinks: dict[str, RasterSink], record: JobRecord, spatial: list[Any]
    ) -> list[dict[str, Any]]:
        for sink in sinks.values():
            sink.finish()
        layers: list[dict[str, Any]] = []
        for i, o in enumerate(spatial):
            file = "prediction.tif" if i == 0 else "attention.tif"
            band = 1 if i == 0 else i
            layers.append(
                {
                    "name": o.name,
                    "role": o.role,
                    "kind": o.kind,
                    "shape": [record.georef["height"], record.georef["width"]]
                    if record.georef
                    else [],
                    "dtype": sinks["prediction"].dtype,
                    "storage": "cog",
                    "file": file,
                    "band": band,
                    **({"level": o.level} if o.level is not None else {}),
                    **({"description": o.description} if o.description else {}),
                }
            )
        return layers

    async def _temporal(
        self,
        record: JobRecord,
        served: ServedModel,
        paths: list[Path],
        options: SceneOptions,
        progress: Callable[[int, int], None],
        cancelled: Callable[[], bool],
    ) -> None:
        manifest = served.manifest
        task = served.task
        assert isinstance(task, TemporalTask)
        bands = len(manifest.input.bands)
        classes = manifest.classes
        days = days_from_dates([date.fromisoformat(d) for d in options.dates])
        t = len(days)
        size = options.tile_size or 256
        with contextlib.ExitStack() as stack:
            datasets = [stack.enter_context(open_scene(p)) for p in paths]
            info = describe(datasets[0])
            grid = TileGrid(info.height, info.width, size, 0)
            k = len(classes)
            blender = StripBlender(grid, k + t + 1)
            valid_flags = [_all_valid(ds) for ds in datasets]
            sinks = self._sinks_temporal(record, info, classes, options)

            def read(tile: Tile) -> tuple[np.ndarray, np.ndarray] | None:
                parts, masks = [], []
                for ds, all_valid in zip(datasets, valid_flags, strict=True):
                    got = _read_tile(ds, tile, info, all_valid, pad=False)
                    if got is None:
                        got = (np.zeros((ds.count, 1, 1), np.float32), np.zeros((1, 1), bool))
                    parts.append(got)
                h = max(p[0].shape[1] for p in parts)
                w = max(p[0].shape[2] for p in parts)
                for data, valid in parts:
                    n_dates = data.shape[0] // bands
                    if data.shape[1:] != (h, w):
                        data = np.zeros((data.shape[0], h, w), np.float32)
                        valid = np.zeros((h, w), bool)
                    cube = data.reshape(n_dates, bands, h, w)
                    date_valid = valid[None] & np.isfinite(cube).all(axis=1)
                    masks.append(date_valid)
                valid_tw = np.concatenate(masks)  # (T, h, w)
                if not valid_tw.any():
                    return None
                cube = np.concatenate([p[0] for p in parts]).reshape(t, bands, h, w)
                return cube.reshape(t * bands, h, w), valid_tw.reshape(t, h, w)

            async def infer(tile: Tile, data: np.ndarray, valid_tw: np.ndarray) -> np.ndarray:
                h, w = valid_tw.shape[1:]
                cube = data.reshape(t, bands, h, w)
                pixels = valid_tw.any(axis=0)
                series = cube[:, :, pixels].transpose(2, 0, 1)
                valid = valid_tw[:, pixels].T
                out = await task.predict(series, days, valid, self.timeout_s)
                result = np.full((k + t + 1, tile.size, tile.size), np.nan, np.float32)
                view = result[:, :h, :w]
                view[:k, pixels] = out.probabilities.T
                att = next(iter(out.attention.values()))  # (N, heads, T)
                view[k : k + t, pixels] = att.mean(axis=1).T
                view[-1] = pixels
                return result

            def flush(first: int, block: np.ndarray) -> None:
                valid = block[-1] > 0.5
                probs = block[:k]
                cls = np.where(valid, np.nan_to_num(probs, nan=-1).argmax(axis=0), CLASS_NODATA)
                sinks["class"].write(first, cls[None].astype(np.float32))
                probs[:, ~valid] = np.nan
                sinks["probabilities"].write(first, probs)
                att = block[k : k + t]
                att[:, ~valid] = np.nan
                sinks["attention"].write(first, att)

            try:
                await self._run_grid(grid, blender, read, infer, flush, progress, cancelled, sinks)
                await asyncio.to_thread(self._check_disk, sinks, True)
                await asyncio.to_thread(lambda: [s.finish() for s in sinks.values()])
            except BaseException:
                await _abort(sinks)
                raise
        shape = [info.height, info.width]
        record.layers = [
            {
                "name": "class",
                "role": "prediction",
                "kind": "class",
                "shape": shape,
                "dtype": "uint8",
                "nodata": CLASS_NODATA,
                "classes": classes,
                "storage": "cog",
                "file": "class.tif",
                "band": 1,
            },
            {
                "name": manifest.prediction.name,
                "role": "prediction",
                "kind": "class_probabilities",
                "shape": [k, *shape],
                "dtype": sinks["probabilities"].dtype,
                "classes": classes,
                "storage": "cog",
                "file": "probabilities.tif",
                "band": None,
            },
        ]
        for spec in manifest.attention:
            record.layers.append(
                {
                    "name": spec.name,
                    "role": "attention",
                    "kind": spec.kind,
                    "shape": [t, *shape],
                    "dtype": sinks["attention"].dtype,
                    "dates": options.dates,
                    "storage": "cog",
                    "file": "attention.tif",
                    "band": None,
                    "description": "attention per date, mean over heads",
                }
            )
        record.extra.update({"dates": options.dates, "days": days.tolist(), "classes": classes})
        record.extra["tiling"] = {"tile_size": size, "overlap": 0, "tiles": len(grid)}

    def _sinks_temporal(
        self, record: JobRecord, info: RasterInfo, classes: list[str], options: SceneOptions
    ) -> dict[str, RasterSink]:
        dates = options.dates
        return {
            "class": self._sink(
                record,
                info,
                "class.tif",
                [f"class (index into: {', '.join(classes)})"],
                options,
                dtype="uint8",
                scaled=False,
                nodata=CLASS_NODATA,
                resampling="mode",
            ),
            "probabilities": self._sink(
                record,
                info,
                "probabilities.tif",
                [f"probability of {c}" for c in classes],
                options,
                band_tags=[{"CLASS": c} for c in classes],
            ),
            "attention": self._sink(
                record,
                info,
                "attention.tif",
                [f"attention {d} (mean over heads)" for d in dates],
                options,
                band_tags=[{"DATE": d} for d in dates],
            ),
        }

    async def _run_grid(
        self,
        grid: TileGrid,
        blender: StripBlender,
        read: Callable[[Tile], tuple[np.ndarray, np.ndarray] | None],
        infer: Callable[[Tile, np.ndarray, np.ndarray], Any],
        flush: Callable[[int, np.ndarray], None],
        progress: Callable[[int, int], None],
        cancelled: Callable[[], bool],
        sinks: dict[str, RasterSink] | None = None,
    ) -> None:
        total = len(grid)
        done = 0
        gate = asyncio.Semaphore(self.in_flight_tiles)
        # One reader thread keeps GDAL's dataset handle single-threaded while the
        # batcher's thread runs inference: reading and inference overlap.
        read_lock = asyncio.Lock()

        async def one(tile: Tile) -> tuple[Tile, np.ndarray | None]:
            async with gate:
                if cancelled():
                    raise JobCancelled
                async with read_lock:
                    got = await asyncio.to_thread(read, tile)
                if got is None:
                    return tile, None
                return tile, await infer(tile, *got)

        pending: dict[int, list[asyncio.Task[tuple[Tile, np.ndarray | None]]]] = {}
        # Rows are started one ahead, so the next row's reads overlap this row's
        # inference; blending stays in order, on this task.
        next_row = 0

        def start_row(row: int) -> None:
            pending[row] = [asyncio.ensure_future(one(t)) for t in grid.row_tiles(row)]

        async def landed(
            task: asyncio.Task[tuple[Tile, np.ndarray | None]],
        ) -> tuple[Tile, np.ndarray | None]:
            # A cancel stops the job within a moment, not after the tiles in flight
            # (16 queued tiles on a busy CPU outlasted the tile deadline).
            while True:
                finished, _ = await asyncio.wait({task}, timeout=CANCEL_POLL_S)
                if finished:
                    return task.result()
                if cancelled():
                    raise JobCancelled

        def final_blocks(row: int) -> list[tuple[int, np.ndarray]]:
            blender.row_done(row)
            return list(blender.pop_final())

        current: list[asyncio.Task[tuple[Tile, np.ndarray | None]]] = []
        try:
            for row in range(grid.rows):
                while next_row <= min(row + 1, grid.rows - 1):
                    start_row(next_row)
                    next_row += 1
                current = pending.pop(row)
                for task in current:
                    tile, out = await landed(task)
                    # Blending a tile into scene-wide rows copies hundreds of MB
                    # on wide scenes: on a worker thread, one call at a time.
                    await asyncio.to_thread(blender.add, tile, out)
                    done += 1
                    progress(done, total)
                for first, block in await asyncio.to_thread(final_blocks, row):
                    await asyncio.to_thread(flush, first, block)
                    if sinks is not None:
                        await asyncio.to_thread(self._check_disk, sinks)
        finally:
            leftover = [*current, *(t for tasks in pending.values() for t in tasks)]
            for task in leftover:
                task.cancel()
            await asyncio.gather(*leftover, return_exceptions=True)

    def _check_disk(self, sinks: dict[str, RasterSink], finishing: bool = False) -> None:
        """Fail the job if its outputs pass the disk cap or the volume runs short.

        Finishing adds overviews and the (compressed) COG beside each partial:
        counted as half as much again as the partials take.
        """
        used = sum(sink.disk_bytes() for sink in sinks.values())
        need = used // 2 if finishing else 0
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


async def _abort(sinks: dict[str, RasterSink]) -> None:
    """Drop unfinished outputs on a worker thread: closing large files blocks for long."""

    def drop() -> None:
        for sink in sinks.values():
            sink.abort()

    dropping = asyncio.ensure_future(asyncio.to_thread(drop))
    # A second cancellation must not leave the files behind: the thread goes on.
    with contextlib.suppress(BaseException):
        await asyncio.shield(dropping)


def _scene_band_mean(ds: DatasetReader, info: RasterInfo, all_valid: bool) -> np.ndarray:
    """``(C,)`` mean of each band over the scene's valid pixels.

    Read at most 2048 pixels a side (exact for smaller scenes), so that every
    tile gets the band statistics the whole scene would.
    """
    scale = max(1, -(-max(info.width, info.height) // 2048))
    shape = (info.count, max(1, info.height // scale), max(1, info.width // scale))
    try:
        data = ds.read(list(info.indexes) or None, out_shape=shape).astype(np.float32)
        valid = None if all_valid else ds.dataset_mask(out_shape=shape[1:]) > 0
    except RasterioError:
        raise InvalidRaster(UNREADABLE) from None
    if data.dtype.kind == "f":
        finite = np.isfinite(data).all(axis=0)
        valid = finite if valid is None else valid & finite
    return band_means(np.nan_to_num(data), valid)


def _round_up(value: int, multiple: int) -> int:
    return max(multiple, -(-value // multiple) * multiple)


def _read_tile(
    ds: DatasetReader,
    tile: Tile,
    info: RasterInfo,
    all_valid: bool,
    pad: bool = True,
    core: tuple[int, int, int] | None = None,
    source: ModelGridSource | None = None,
) -> tuple[np.ndarray, np.ndarray] | None:
    """A window's ``(C, size, size)`` data (reflect-padded) and ``(size, size)`` validity.

    Returns None when the window's ``core`` (``dy, dx, size`` inside it; all of
    it by default) has no valid pixel: the tile is skipped. With a ``source``,
    the window is on the model's grid (``info``'s size) and read through it.
    """
    y0, y1, x0, x1 = read_bounds(tile, info.height, info.width)
    window = Window(x0, y0, x1 - x0, y1 - y0)
    try:
        if source is not None:
            data, valid = source.read(y0, y1, x0, x1)
        else:
            # Data bands only: an alpha band is read as the mask below.
            data = ds.read(list(info.indexes) or None, window=window)
            valid = (
                np.ones(data.shape[1:], bool) if all_valid else ds.dataset_mask(window=window) > 0
            )
    except RasterioError:
        raise InvalidRaster(UNREADABLE) from None
    if data.dtype.kind == "f":
        valid &= np.isfinite(data).all(axis=0)
    dy, dx, size = core or (0, 0, tile.size)
    cy0, cx0 = max(0, tile.y + dy) - y0, max(0, tile.x + dx) - x0
    cy1 = min(info.height, tile.y + dy + size) - y0
    cx1 = min(info.width, tile.x + dx + size) - x0
    if not valid[cy0:cy1, cx0:cx1].any():
        return None
    if not pad:
        return data.astype(np.float32), valid
    data = reflect_pad(data.astype(np.float32), tile, info.height, info.width)
    padded_valid = reflect_pad(valid[None].astype(np.uint8), tile, info.height, info.width)[0] > 0
    return data, padded_valid


def elapsed_eta(started: float, done: int, total: int) -> float | None:
    """Seconds left, from the pace so far."""
    if done <= 0:
        return None
    pace = (time.time() - started) / done
    return round(pace * (total - done), 1)
