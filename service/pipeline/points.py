"""Every raster layer's values at one place of a job: what a click on its map shows."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import rasterio.crs
import rasterio.warp
from affine import Affine

from service.errors import InvalidInput, NotFound
from service.jobs.record import JobRecord, Layer
from service.jobs.store import JobStore
from service.pipeline.layers import LayerReader, served_values

# A class map's value where there is no class, when its layer names none.
CLASS_NODATA = 255


def locate(
    record: JobRecord,
    lon: float | None = None,
    lat: float | None = None,
    row: int | None = None,
    col: int | None = None,
) -> tuple[int, int]:
    """The ``(row, col)`` of a longitude and latitude (or a pixel) on a raster job's grid.

    Raises:
        InvalidInput: neither or both ways given, a lon/lat on a job without a
            CRS, or a place off the raster.
    """
    georef = record.georef or {}
    if record.kind != "raster" or not georef:
        raise NotFound("this job has no raster layers to query at a point")
    height, width = int(georef["height"]), int(georef["width"])
    if row is not None and col is not None and lon is None and lat is None:
        if not (0 <= row < height and 0 <= col < width):
            raise InvalidInput(
                f"row {row}, col {col} is off the raster: rows 0 to {height - 1}, "
                f"cols 0 to {width - 1}"
            )
        return row, col
    if lon is None or lat is None or row is not None or col is not None:
        raise InvalidInput("give either lon and lat, or row and col (pixels)")
    if not georef.get("crs"):
        raise InvalidInput("this job's raster has no CRS: ask by row and col (pixels)")
    if not (-180 <= lon <= 180 and -90 <= lat <= 90):
        raise InvalidInput("lon must be -180 to 180 and lat -90 to 90 (degrees, EPSG:4326)")
    crs = rasterio.crs.CRS.from_user_input(georef["crs"])
    xs, ys = rasterio.warp.transform("EPSG:4326", crs, [lon], [lat])
    fcol, frow = ~Affine(*georef["transform"][:6]) * (xs[0], ys[0])
    if not (math.isfinite(frow) and math.isfinite(fcol)):
        raise InvalidInput(f"lon {lon}, lat {lat} cannot be placed in the job's CRS")
    r, c = math.floor(frow), math.floor(fcol)
    if not (0 <= r < height and 0 <= c < width):
        raise InvalidInput(f"lon {lon}, lat {lat} is off the job's raster (outside its bounds)")
    return r, c


def _value(v: float) -> float | None:
    return round(float(v), 6) if math.isfinite(v) else None


def _class_entry(layer: Layer, value: float) -> dict[str, Any]:
    nodata = CLASS_NODATA if layer.nodata is None else layer.nodata
    if not math.isfinite(value) or int(value) == nodata:
        return {"value": None, "class": None}
    index = int(value)
    classes = layer.classes or []
    return {"value": index, "class": classes[index] if index < len(classes) else None}


def _pixel(
    record: JobRecord, store: JobStore, reader: LayerReader, layer: Layer, row: int, col: int
) -> np.ndarray:
    """A layer's values at one pixel: ``()`` of a 2-D layer, else one per band (and head)."""
    if layer.storage == "cog":
        # A COG kept at a coarser stride (a chip scene's) holds one value per cell.
        step = layer.stride or 1
        rows, cols = slice(row // step, row // step + 1), slice(col // step, col // step + 1)
        if len(layer.shape) == 2:
            return np.asarray(reader.read(layer.name, rows, cols)[0, 0], np.float64)
        bands = [reader.read(layer.name, rows, cols, band=i)[0, 0] for i in range(layer.shape[0])]
        return np.asarray(bands, np.float64)
    return np.asarray(served_values(record, store, layer.name)[..., row, col], np.float64)


def point_values(record: JobRecord, store: JobStore, row: int, col: int) -> list[dict[str, Any]]:
    """Each raster layer's values at pixel ``(row, col)``, as the job's answers name them.

    A 2-D layer gives ``value`` (a class map also its ``class``); a per-class
    layer ``values`` by class; a per-date layer ``values`` by date (mean over
    heads) and, where a job kept them, ``heads`` (``(heads, T)``); a multi-head
    map ``value`` (their mean) and ``heads``. Null where there is no data.
    """
    out: list[dict[str, Any]] = []
    with LayerReader(record, store) as reader:
        for layer in record.layers:
            if len(layer.shape) < 2 or layer.storage == "inline":
                continue
            entry: dict[str, Any] = {"name": layer.name, "kind": layer.kind}
            pixel = _pixel(record, store, reader, layer, row, col)
            if pixel.ndim == 0 and layer.kind == "class":
                entry.update(_class_entry(layer, float(pixel)))
            elif pixel.ndim == 0:
                entry["value"] = _value(float(pixel))
            elif pixel.ndim == 2:  # (heads, T)
                entry["values"] = [_value(v) for v in pixel.mean(axis=0)]
                entry["heads"] = [[_value(v) for v in head] for head in pixel]
            elif layer.heads:  # (heads,): their mean, and each
                shown = pixel[np.isfinite(pixel)]
                entry["value"] = _value(float(shown.mean())) if shown.size else None
                entry["heads"] = [_value(v) for v in pixel]
            else:
                entry["values"] = [_value(v) for v in pixel]
            if "values" in entry:
                keys = layer.classes if layer.kind == "class_probabilities" else layer.dates
                if keys and len(keys) == len(entry["values"]):
                    entry["classes" if layer.kind == "class_probabilities" else "dates"] = keys
            out.append(entry)
    return out


def point(
    record: JobRecord,
    store: JobStore,
    lon: float | None = None,
    lat: float | None = None,
    row: int | None = None,
    col: int | None = None,
) -> dict[str, Any]:
    """The answer of a point query: where it fell and every raster layer's values there."""
    r, c = locate(record, lon, lat, row, col)
    body: dict[str, Any] = {"job_id": record.id, "row": r, "col": c}
    if lon is not None and lat is not None:
        body.update(lon=lon, lat=lat)
    body["layers"] = point_values(record, store, r, c)
    return body
