"""Temporal classifiers in the pipeline: classes and attention per series or per pixel."""

from __future__ import annotations

import contextlib
from dataclasses import replace
from datetime import date

import numpy as np

from service.errors import InvalidInput
from service.jobs.record import Layer, Series, Tiling
from service.pipeline.inputs import SeriesInput, pixel_series
from service.pipeline.scene_grid import GridPass, SceneWork, run_and_finish
from service.pipeline.scene_read import all_valid, open_scene, read_tile
from service.pipeline.tasks.base import (
    CLASS_NODATA,
    Prediction,
    SyncTask,
    class_layer,
    class_sink,
    output_layer,
)
from service.raster.cog import RasterSink
from service.raster.decode import RasterInfo, describe
from service.runtime.manifest import Manifest
from service.runtime.temporal import TemporalTask, days_from_dates
from service.runtime.tiling import StripBlender, Tile, TileGrid
from service.runtime.validation import check_layout


class TemporalClassification(SyncTask[SeriesInput, TemporalTask]):
    """Dated series in, a class per series (or pixel) and attention per date out."""

    name = "temporal classification"
    takes = SeriesInput
    runtime = TemporalTask

    async def lay_out(self, model: TemporalTask, inp: SeriesInput, timeout_s: float) -> Prediction:
        """Classify series (parcels, or the pixels of dated rasters)."""
        manifest = model.manifest
        out = await model.predict(inp.series, inp.days, inp.valid, timeout_s)
        days = inp.days.tolist()
        series = Series(inp.dates, days, manifest.classes)
        layers: list[Layer] = []
        arrays: dict[str, np.ndarray] = {}
        pred = manifest.prediction
        if inp.pixels is None:
            series.ids = inp.ids
            arrays[pred.name] = out.probabilities
            layers.append(output_layer(pred, out.probabilities))
            for spec in manifest.attention:
                arrays[spec.name] = out.attention[spec.name]
                layers.append(
                    output_layer(spec, out.attention[spec.name], dates=inp.dates, days=days)
                )
            return Prediction("series", layers, arrays, None, series)
        if inp.georef is None:
            raise InvalidInput("the pixels of a series need the raster's georeference")
        pixels = inp.pixels
        h, w = pixels.shape
        classes = np.full((h, w), CLASS_NODATA, dtype=np.uint8)
        classes[pixels] = out.probabilities.argmax(axis=1)
        probs = np.full((out.probabilities.shape[1], h, w), np.nan, dtype=np.float32)
        probs[:, pixels] = out.probabilities.T
        arrays["class"] = classes
        layers.append(class_layer(manifest, [h, w]))
        arrays[pred.name] = probs
        layers.append(output_layer(pred, probs, classes=manifest.classes))
        for spec in manifest.attention:
            att = out.attention[spec.name]  # (N, heads, T)
            cube = np.full((att.shape[1], att.shape[2], h, w), np.nan, dtype=np.float32)
            cube[:, :, pixels] = att.transpose(1, 2, 0)
            arrays[spec.name] = cube
            layers.append(output_layer(spec, cube, dates=inp.dates, days=days))
        return Prediction("raster", layers, arrays, inp.georef.to_json(), series)

    def check_scene_file(self, manifest: Manifest, info: RasterInfo) -> None:
        """A whole number of dates of the model's bands."""
        if info.count % len(manifest.input.bands):
            check_layout(manifest, info.count, info.dtype)

    def check_scene_dates(
        self, manifest: Manifest, infos: list[RasterInfo], dates: list[str]
    ) -> None:
        """As many dates as the files hold, within the model's range."""
        bands = len(manifest.input.bands)
        t = sum(i.count for i in infos) // bands
        check_layout(manifest, bands, infos[0].dtype, dates=t)
        if len(dates) != t:
            raise InvalidInput(f"{len(dates)} dates given for {t} dated images of {bands} bands")

    async def run_scene(self, work: SceneWork) -> None:
        """Every pixel's series classified tile by tile: class, probability and attention COGs."""
        record, served, options = work.record, work.served, work.options
        manifest = served.manifest
        model = TemporalTask(manifest, served.batcher)
        bands = len(manifest.input.bands)
        classes = manifest.classes
        days = days_from_dates([date.fromisoformat(d) for d in options.dates])
        t = len(days)
        size = options.tile_size or model.scene_tile(manifest)
        with contextlib.ExitStack() as stack:
            datasets = [stack.enter_context(open_scene(p)) for p in work.paths]
            info = describe(datasets[0])
            grid = TileGrid(info.height, info.width, size, 0)
            k = len(classes)
            blender = StripBlender(grid, k + t + 1)
            valid_flags = [all_valid(ds) for ds in datasets]
            sinks = self._sinks(work, info, classes, options.dates)

            def read(tile: Tile) -> tuple[np.ndarray, np.ndarray] | None:
                parts, masks = [], []
                for ds, valid_everywhere in zip(datasets, valid_flags, strict=True):
                    got = read_tile(ds, tile, info, valid_everywhere, pad=False)
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
                series, valid, pixels = pixel_series(cube, valid_tw)
                out = await model.predict(series, days, valid, work.timeout_s)
                result = np.full((k + t + 1, tile.size, tile.size), np.nan, np.float32)
                view = result[:, :h, :w]
                view[:k, pixels] = out.probabilities.T
                att = next(iter(out.attention.values()))  # (N, heads, T)
                view[k : k + t, pixels] = att.mean(axis=1).T
                view[-1] = pixels
                return result

            def flush(first: int, col: int, block: np.ndarray) -> None:
                valid = block[-1] > 0.5
                probs = block[:k]
                cls = np.where(valid, np.nan_to_num(probs, nan=-1).argmax(axis=0), CLASS_NODATA)
                sinks["class"].write(first, cls[None].astype(np.float32), col)
                probs[:, ~valid] = np.nan
                sinks["probabilities"].write(first, probs, col)
                att = block[k : k + t]
                att[:, ~valid] = np.nan
                sinks["attention"].write(first, att, col)

            def finish() -> None:
                for sink in sinks.values():
                    sink.finish()

            grid_pass = GridPass(grid, blender, read, infer, flush, sinks)
            await run_and_finish(work, grid_pass, finish)
        shape = [info.height, info.width]
        record.layers = [
            replace(class_layer(manifest, shape), storage="cog", file="class.tif", band=1),
            Layer(
                name=manifest.prediction.name,
                role="prediction",
                kind="class_probabilities",
                shape=[k, *shape],
                dtype=sinks["probabilities"].dtype,
                classes=classes,
                storage="cog",
                file="probabilities.tif",
            ),
        ]
        for spec in manifest.attention:
            record.layers.append(
                Layer(
                    name=spec.name,
                    role="attention",
                    kind=spec.kind,
                    shape=[t, *shape],
                    dtype=sinks["attention"].dtype,
                    dates=options.dates,
                    description="attention per date, mean over heads",
                    storage="cog",
                    file="attention.tif",
                )
            )
        record.series = Series(options.dates, days.tolist(), classes)
        record.tiling = Tiling(size, 0, len(grid))

    @staticmethod
    def _sinks(
        work: SceneWork, info: RasterInfo, classes: list[str], dates: list[str]
    ) -> dict[str, RasterSink]:
        return {
            "class": class_sink(work, info, classes),
            "probabilities": work.sink(
                "probabilities.tif",
                info,
                [f"probability of {c}" for c in classes],
                band_tags=[{"CLASS": c} for c in classes],
            ),
            "attention": work.sink(
                "attention.tif",
                info,
                [f"attention {d} (mean over heads)" for d in dates],
                band_tags=[{"DATE": d} for d in dates],
            ),
        }
