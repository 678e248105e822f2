"""Segmentation models in the pipeline: one image's layers, and scenes tile by tile."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

import numpy as np

from service.jobs.record import Layer, ResamplingSummary, Tiling
from service.pipeline.inputs import RasterInput
from service.pipeline.scene_grid import GridPass, SceneWork, run_and_finish, to_thread_to_end
from service.pipeline.scene_read import all_valid, open_scene, read_tile, scene_band_mean
from service.pipeline.statistics import coarse_statistics, statistics
from service.pipeline.tasks.base import Prediction, SyncTask, output_layer
from service.pipeline.units import FinishPass, PlanPass
from service.raster.decode import RasterInfo, describe
from service.raster.resample import (
    ModelGridSource,
    Resampling,
    RowsBack,
    input_valid_rows,
    plan_resampling,
)
from service.runtime.manifest import Manifest, OutputSpec
from service.runtime.segmentation import SegmentationTask, context_px, upsample
from service.runtime.tiling import RowJoiner, StripBlender, Tile, TileGrid
from service.runtime.validation import check_layout


def round_up(value: int, multiple: int) -> int:
    """``value`` rounded up to a multiple of ``multiple`` (at least one multiple)."""
    return max(multiple, -(-value // multiple) * multiple)


def channel_names(spec: OutputSpec, manifest: Manifest) -> dict[str, Any]:
    """A channel layer's names: ``bands`` when it weighs the input's bands, else ``channels``."""
    if spec.kind != "channel":
        return {}
    names = spec.channel_names(manifest.input.bands)
    return {"bands" if names == list(manifest.input.bands) else "channels": names}


def channel_values(spec: OutputSpec, array: np.ndarray) -> dict[str, Any]:
    """A channel layer's few weights, kept in its record too: jobs' answers list them."""
    return {"values": [float(v) for v in array]} if spec.kind == "channel" else {}


def channels(spec: OutputSpec) -> int:
    """Bands of a spatial output ``(B, C, H, W)``: C, or 1 where the manifest leaves it open."""
    dim = spec.shape[1] if len(spec.shape) > 1 else 1
    return dim if isinstance(dim, int) else 1


def scene_bands(spec: OutputSpec) -> int:
    """Bands a spatial output gives a scene: the prediction's, one for attention."""
    return channels(spec) if spec.role == "prediction" else 1


def scene_maps(spec: OutputSpec, maps: np.ndarray) -> np.ndarray:
    """A tile's bands of a spatial output: attention heads are averaged, as scenes keep them."""
    if spec.role == "prediction" or len(maps) == 1:
        return maps
    return np.asarray(maps.mean(axis=0, keepdims=True))


class SceneOutputs:
    """Where a segmentation scene's blended rows go, and the layers they become.

    Windows of rows come as ``(channels, rows, columns)`` float32, NaN where
    there is no data: every spatial output's bands in manifest order (the
    prediction first).
    This one writes a binary probability map and the attention maps.
    """

    def __init__(self, work: SceneWork, info: RasterInfo, spatial: list[OutputSpec]) -> None:
        self.spatial = spatial
        first = spatial[0]
        self.sinks = {
            "prediction": work.sink("prediction.tif", info, [f"{first.name} ({first.kind})"])
        }
        if len(spatial) > 1:
            descriptions = [f"{o.name} ({o.kind}, level {o.level})" for o in spatial[1:]]
            self.sinks["attention"] = work.sink("attention.tif", info, descriptions)

    def write(self, first: int, values: np.ndarray, col: int = 0) -> None:
        """Write a window from row ``first``, column ``col`` (on a worker thread, in order)."""
        self.sinks["prediction"].write(first, values[:1], col)
        if len(self.spatial) > 1:
            self.sinks["attention"].write(first, values[1:], col)

    def layers(self, georef: dict[str, Any] | None) -> list[Layer]:
        """The layers of the spatial outputs, stored as bands of the job's COGs."""
        layers: list[Layer] = []
        for i, o in enumerate(self.spatial):
            layers.append(
                Layer(
                    name=o.name,
                    role=o.role,
                    kind=o.kind,
                    shape=[georef["height"], georef["width"]] if georef else [],
                    dtype=self.sinks["prediction"].dtype,
                    level=o.level,
                    description=o.description or None,
                    storage="cog",
                    file="prediction.tif" if i == 0 else "attention.tif",
                    band=1 if i == 0 else i,
                )
            )
        return layers


class ImageSegmentation(SyncTask[RasterInput, SegmentationTask]):
    """Images in, per-pixel maps out: a probability map, gate maps and band weights."""

    name = "segmentation"
    footprints = True
    takes = RasterInput
    runtime = SegmentationTask
    scene_outputs: type[SceneOutputs] = SceneOutputs

    async def lay_out(
        self, model: SegmentationTask, inp: RasterInput, timeout_s: float
    ) -> Prediction:
        """Segment one image; every output becomes a layer."""
        manifest = model.manifest
        # Uploads come planned; an array without a georeference runs as is.
        plan = inp.resampling or plan_resampling(None, manifest.input.gsd_m, 1.0)
        if plan.applied:
            data, valid = await asyncio.to_thread(plan.to_model, inp.data, inp.valid)
            out = await model.predict(data, valid, timeout_s)
            out = await asyncio.to_thread(plan.outputs_to_input, out, manifest, inp.valid)
        else:
            out = await model.predict(inp.data, inp.valid, timeout_s)
        layers: list[Layer] = []
        arrays: dict[str, np.ndarray] = {}
        h, w = inp.data.shape[1:]
        # Where a coarse map's upsampled values are masked: the first full-resolution
        # one-band output carries NaN exactly where the input had no data.
        mask = next(
            (
                o.name
                for o in manifest.outputs
                if len(o.shape) == 4 and o.stride == 1 and channels(o) == 1 and o.kind != "channel"
            ),
            None,
        )
        for spec in manifest.outputs:
            array = out.layers[spec.name]
            extra: dict[str, Any] = {**channel_names(spec, manifest), **channel_values(spec, array)}
            heads = spec.heads if spec.kind == "spatial" else 1
            if array.ndim == 3 and array.shape[0] == 1:
                array = array[0]
            elif heads > 1:
                extra["heads"] = heads
            arrays[spec.name] = array
            # Statistics of what is served by default: the mean over heads.
            shown = array.mean(axis=0) if heads > 1 else array
            # Back on the input's grid, a resampled coarse map is at full resolution.
            if spec.stride > 1 and array.ndim in (2, 3) and not plan.applied:
                extra["stride"] = spec.stride
                if out.valid is not None and mask is not None:
                    extra["mask"] = mask
                stats = coarse_statistics(shown, spec.stride, h, w, out.valid)
                shape = (heads, h, w) if heads > 1 else (h, w)
                layers.append(output_layer(spec, array, shape, stats, **extra))
            else:
                layers.append(output_layer(spec, array, stats=statistics(shown), **extra))
        if inp.georef is not None:
            georef = inp.georef.to_json()
        else:
            georef = {"crs": None, "transform": [1, 0, 0, 0, 1, 0], "width": w, "height": h}
        return Prediction(
            "raster", layers, arrays, georef, resampling=ResamplingSummary(**plan.to_json())
        )

    def check_scene_file(self, manifest: Manifest, info: RasterInfo) -> None:
        """One image of the model's bands and dtype."""
        check_layout(manifest, info.count, info.dtype)

    def check_scene_dates(
        self, manifest: Manifest, infos: list[RasterInfo], dates: list[str]
    ) -> None:
        """Images have no dates."""

    async def run_scene(self, work: SceneWork) -> None:
        """Tiles on the model's grid, blended back into COGs on the input's grid."""
        record, served, options = work.record, work.served, work.options
        manifest = served.manifest
        model = SegmentationTask(manifest, served.batcher)
        spatial = [o for o in manifest.outputs if len(o.shape) == 4 and o.kind != "channel"]
        channel = [o for o in manifest.outputs if o.kind == "channel"]
        size = round_up(options.tile_size or model.scene_tile(manifest), model.tile_step(manifest))
        overlap = (
            options.overlap if options.overlap is not None else (manifest.input.tile_overlap or 0)
        )
        fill = np.float32(manifest.input.normalization.mean[0])
        halo = context_px(manifest)
        path = work.paths[0]
        with open_scene(path) as ds, open_scene(path) as rows_ds:
            info = describe(ds)
            # Tiles are read and inferred on the model's grid (its resolution),
            # outputs written on the input's; rows_ds reads the input's validity
            # for them off the reader thread.
            asked = record.resampling.to_json() if record.resampling else {}
            plan = Resampling.from_json(asked, info.width, info.height)
            tiled = replace(info, width=plan.model_width, height=plan.model_height)
            grid = TileGrid(tiled.height, tiled.width, size, min(overlap, size // 2), halo)
            # Layers blended: every spatial output, then the input's validity.
            blender = StripBlender(grid, sum(map(scene_bands, spatial)) + 1)
            channel_sum = {o.name: np.zeros(0) for o in channel}
            channel_weight = np.zeros(1)
            outputs = self.scene_outputs(work, info, spatial)
            sinks = outputs.sinks
            valid_everywhere = all_valid(ds)
            # Planning and finishing infer no tile; a model without a band-mean input needs none.
            if model.band_mean_name is None or isinstance(work.part, PlanPass | FinishPass):
                scene_mean = np.zeros(info.count, np.float32)
            else:
                scene_mean = await to_thread_to_end(scene_band_mean, ds, info, valid_everywhere)
            source = ModelGridSource(ds, plan, valid_everywhere) if plan.applied else None
            back = RowsBack(plan) if plan.applied else None
            # Resampling back to the input's grid takes whole rows of the model's.
            joiner = RowJoiner(tiled.width) if back is not None else None

            def read(tile: Tile) -> tuple[np.ndarray, np.ndarray] | None:
                # The model reads the tile with its context; only the tile
                # itself decides whether there is anything to predict.
                window, dy, dx = tile.context(tiled.height, tiled.width)
                return read_tile(
                    ds, window, tiled, valid_everywhere, core=(dy, dx, tile.size), source=source
                )

            async def infer(tile: Tile, data: np.ndarray, valid: np.ndarray) -> np.ndarray:
                x = np.where(valid[None], data.astype(np.float32), fill)
                out = await model.batcher.submit(model.feed(x, scene_mean), work.timeout_s)
                nonlocal channel_weight
                _, dy, dx = tile.context(tiled.height, tiled.width)
                core = (slice(dy, dy + tile.size), slice(dx, dx + tile.size))
                weight = float(valid[core].mean())
                for o in channel:
                    # Sized by the first tile: a manifest may leave C open.
                    flat = out[o.name][0].reshape(-1) * weight
                    summed = channel_sum[o.name]
                    channel_sum[o.name] = summed + flat if summed.size else flat
                channel_weight += weight
                h, w = x.shape[1:]
                bands = [
                    (o.stride, band) for o in spatial for band in scene_maps(o, out[o.name][0])
                ]
                # Each band upsampled over the tile itself (not its halo), in place.
                stack = np.empty((len(bands) + 1, *valid[core].shape), np.float32)
                for i, (stride, band) in enumerate(bands):
                    upsample(band, stride, h, w, core, stack[i])
                stack[-1] = valid[core]
                return stack

            write = outputs.write

            def flush(first: int, col: int, block: np.ndarray) -> None:
                valid = block[-1] > 0.5
                values = block[:-1]
                values[:, ~valid] = np.nan
                if back is None or joiner is None:
                    write(first, values, col)
                    return
                rows = joiner.push(first, col, values)
                if rows is None:
                    return
                for row, part in back.push(*rows):
                    # Nodata of the input stays nodata, whatever the model's grid saw.
                    mask = input_valid_rows(rows_ds, row, part.shape[1], valid_everywhere)
                    if mask is not None:
                        part[:, ~mask] = np.nan
                    write(row, part)

            def finish() -> list[Layer]:
                for sink in sinks.values():
                    sink.finish()
                return outputs.layers(record.georef)

            # Totals over tiles, added up over units where a shared queue splits the job.
            channel_sum[".weight"] = channel_weight
            grid_pass = GridPass(grid, blender, read, infer, flush, sinks, channel_sum)
            record.layers = await run_and_finish(work, grid_pass, finish)
        for o in channel:
            weights = channel_sum[o.name] / max(float(channel_weight[0]), 1e-9)
            record.layers.append(
                Layer(
                    name=o.name,
                    role=o.role,
                    kind=o.kind,
                    shape=[len(weights)],
                    dtype="float32",
                    storage="inline",
                    values=[float(v) for v in weights],
                    description="weights averaged over tiles by valid pixels",
                    **channel_names(o, manifest),
                )
            )
        record.tiling = Tiling(size, grid.overlap, len(grid))
