"""Running a prediction and storing it as a job."""

from __future__ import annotations

import asyncio
from typing import Any, NamedTuple

import numpy as np

from service.jobs.record import JobRecord
from service.jobs.store import JobStore
from service.pipeline.inputs import RasterInput, SeriesInput
from service.raster.resample import plan_resampling
from service.runtime.manifest import Manifest, OutputSpec
from service.runtime.repository import ServedModel
from service.runtime.segmentation import SegmentationTask, coarse_valid
from service.runtime.temporal import TemporalTask

CLASS_NODATA = 255


def statistics(array: np.ndarray) -> dict[str, float | None]:
    """Min, max, mean and valid fraction of an array, ignoring NaN."""
    arr = np.asarray(array, dtype=np.float32)
    if arr.size == 0:
        return {"min": None, "max": None, "mean": None, "valid_fraction": 0.0}
    low, high = arr.min(), arr.max()
    if np.isfinite(low) and np.isfinite(high):
        # min and max propagate NaN, so all values are finite: three passes, not five.
        return {
            "min": float(low),
            "max": float(high),
            "mean": float(arr.mean()),
            "valid_fraction": 1.0,
        }
    finite = np.isfinite(arr)
    count = int(finite.sum())
    if count == 0:
        return {"min": None, "max": None, "mean": None, "valid_fraction": 0.0}
    values = arr[finite] if count != arr.size else arr
    return {
        "min": float(values.min()),
        "max": float(values.max()),
        "mean": float(values.mean()),
        "valid_fraction": count / arr.size,
    }


def _coarse_statistics(
    array: np.ndarray, stride: int, height: int, width: int, valid: np.ndarray | None
) -> dict[str, float | None]:
    """Statistics of a coarse map's own values over the cells that cover the image.

    Cells with no valid pixel under them do not count.
    """
    cells = array[: -(-height // stride), : -(-width // stride)]
    if valid is not None:
        cells = np.where(coarse_valid(valid, stride), cells, np.float32(np.nan))
    return statistics(cells)


def _model_ref(manifest: Manifest) -> dict[str, str]:
    return {"name": manifest.name, "version": manifest.version, "task": manifest.task}


def _layer_entry(
    spec: OutputSpec,
    array: np.ndarray,
    shape: tuple[int, ...] | None = None,
    stats: dict[str, float | None] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "name": spec.name,
        "role": spec.role,
        "kind": spec.kind,
        "shape": list(shape or array.shape),
        "dtype": str(array.dtype),
        "statistics": stats or statistics(array),
    }
    if spec.level is not None:
        entry["level"] = spec.level
    if spec.description:
        entry["description"] = spec.description
    entry.update(extra)
    return entry


class Stored(NamedTuple):
    """A job just stored, with the arrays it was stored from (to answer without a read)."""

    record: JobRecord
    arrays: dict[str, np.ndarray]


class PredictionRunner:
    """Runs inputs through a served model and stores the result as a job."""

    def __init__(self, store: JobStore, timeout_s: float) -> None:
        self.store = store
        self.timeout_s = timeout_s

    async def _save(self, record: JobRecord, arrays: dict[str, np.ndarray]) -> None:
        if self.store.write_behind:
            self.store.save_soon(record, arrays)  # returns at once
        else:
            await asyncio.to_thread(self.store.save, record, arrays)

    async def raster(self, served: ServedModel, inp: RasterInput, owner: str | None) -> Stored:
        """Segment one image and store every output as a layer."""
        task = served.task
        assert isinstance(task, SegmentationTask)
        manifest = served.manifest
        # Uploads come planned; an array without a georeference runs as is.
        plan = inp.resampling or plan_resampling(None, manifest.input.gsd_m, 1.0)
        if plan.applied:
            data, valid = await asyncio.to_thread(plan.to_model, inp.data, inp.valid)
            out = await task.predict(data, valid, self.timeout_s)
            out = await asyncio.to_thread(plan.outputs_to_input, out, manifest, inp.valid)
        else:
            out = await task.predict(inp.data, inp.valid, self.timeout_s)
        record = self.store.new_record(_model_ref(manifest), "raster", owner)
        record.extra["resampling"] = plan.to_json()
        arrays: dict[str, np.ndarray] = {}
        h, w = inp.data.shape[1:]
        # Where a coarse map's upsampled values are masked: the first full-resolution
        # spatial output carries NaN exactly where the input had no data.
        mask = next((o.name for o in manifest.outputs if len(o.shape) == 4 and o.stride == 1), None)
        for spec in manifest.outputs:
            array = out.layers[spec.name]
            extra: dict[str, Any] = {}
            if spec.kind == "channel":
                extra["bands"] = list(manifest.input.bands)
            elif array.ndim == 3 and array.shape[0] == 1:
                array = array[0]
            arrays[spec.name] = array
            # Back on the input's grid, a resampled coarse map is at full resolution.
            if spec.stride > 1 and array.ndim == 2 and not plan.applied:
                extra["stride"] = spec.stride
                if out.valid is not None and mask is not None:
                    extra["mask"] = mask
                stats = _coarse_statistics(array, spec.stride, h, w, out.valid)
                record.layers.append(_layer_entry(spec, array, (h, w), stats, **extra))
            else:
                record.layers.append(_layer_entry(spec, array, **extra))
        if inp.georef is not None:
            record.georef = inp.georef.to_json()
        else:
            record.georef = {"crs": None, "transform": [1, 0, 0, 0, 1, 0], "width": w, "height": h}
        await self._save(record, arrays)
        return Stored(record, arrays)

    async def series(self, served: ServedModel, inp: SeriesInput, owner: str | None) -> Stored:
        """Classify series (parcels or raster pixels) and store classes and attention."""
        task = served.task
        assert isinstance(task, TemporalTask)
        out = await task.predict(inp.series, inp.days, inp.valid, self.timeout_s)
        manifest = served.manifest
        kind = "raster" if inp.pixels is not None else "series"
        record = self.store.new_record(_model_ref(manifest), kind, owner)
        record.extra = {"dates": inp.dates, "days": inp.days.tolist(), "classes": manifest.classes}
        arrays: dict[str, np.ndarray] = {}
        pred = manifest.prediction
        if inp.pixels is None:
            record.extra["ids"] = inp.ids
            arrays[pred.name] = out.probabilities
            record.layers.append(_layer_entry(pred, out.probabilities))
            for spec in manifest.attention:
                arrays[spec.name] = out.attention[spec.name]
                record.layers.append(
                    _layer_entry(
                        spec, out.attention[spec.name], dates=inp.dates, days=record.extra["days"]
                    )
                )
        else:
            assert inp.georef is not None
            pixels = inp.pixels
            h, w = pixels.shape
            classes = np.full((h, w), CLASS_NODATA, dtype=np.uint8)
            classes[pixels] = out.probabilities.argmax(axis=1)
            probs = np.full((out.probabilities.shape[1], h, w), np.nan, dtype=np.float32)
            probs[:, pixels] = out.probabilities.T
            arrays["class"] = classes
            record.layers.append(
                {
                    "name": "class",
                    "role": "prediction",
                    "kind": "class",
                    "shape": [h, w],
                    "dtype": "uint8",
                    "nodata": CLASS_NODATA,
                    "classes": manifest.classes,
                }
            )
            arrays[pred.name] = probs
            record.layers.append(_layer_entry(pred, probs, classes=manifest.classes))
            for spec in manifest.attention:
                att = out.attention[spec.name]  # (N, heads, T)
                cube = np.full((att.shape[1], att.shape[2], h, w), np.nan, dtype=np.float32)
                cube[:, :, pixels] = att.transpose(1, 2, 0)
                arrays[spec.name] = cube
                record.layers.append(
                    _layer_entry(spec, cube, dates=inp.dates, days=record.extra["days"])
                )
            record.georef = inp.georef.to_json()
        await self._save(record, arrays)
        return Stored(record, arrays)
