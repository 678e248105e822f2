"""Layer and input previews as small PNGs for the viewer (decimated, 8-bit).

The browser colour-maps the grey values itself; the server only scales them to
0-255 and marks nodata transparent, so a preview is a fraction of the JSON values.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
import rasterio
from rasterio.errors import NotGeoreferencedWarning
from rasterio.io import MemoryFile

from service.errors import NotFound
from service.jobs.rasters import open_raster
from service.jobs.record import JobRecord
from service.jobs.store import JobStore
from service.pipeline.layers import served_values
from service.raster.cog import read_band
from service.raster.gdal_env import HARDENED_GDAL

MAX_SIDE = 1024
# Kinds whose values are probabilities: shown on a fixed 0-1 scale, not stretched.
FIXED_SCALE = frozenset({"probability", "class_probabilities"})


def preview_shape(height: int, width: int, max_side: int = MAX_SIDE) -> tuple[int, int]:
    """``(h, w)`` of a preview at most ``max_side`` pixels on its longer side."""
    step = max(1, math.ceil(max(height, width) / max_side))
    return math.ceil(height / step), math.ceil(width / step)


def layer_values(record: JobRecord, store: JobStore, name: str, band: int | None) -> np.ndarray:
    """A raster layer's ``(h, w)`` float32 preview (NaN for nodata).

    ``band`` picks a class of ``(K, H, W)`` probabilities or a date of
    ``(heads, T, H, W)`` temporal attention (then averaged over heads).
    """
    layer = record.layer(name)
    shape = layer.shape
    if record.kind != "raster" or len(shape) < 2:
        raise NotFound(f"layer {name!r} is not a raster layer")
    band = band or 0
    if len(shape) > 2:
        count = shape[-3]
        if not 0 <= band < count:
            raise NotFound(f"layer {name!r} has bands 0 to {count - 1}")
    h, w = preview_shape(shape[-2], shape[-1])
    if layer.storage == "cog" and layer.file is not None:
        with open_raster(store, record, layer.file, driver="GTiff") as ds:
            index = (band + 1) if len(shape) > 2 else (layer.band or 1)
            return read_band(ds, index, layer.kind == "class", out_shape=(h, w))
    array = served_values(record, store, name)
    step = max(1, math.ceil(max(shape[-2], shape[-1]) / MAX_SIDE))
    picked: np.ndarray
    if len(shape) == 4:
        picked = np.asarray(array[:, band, ::step, ::step], dtype=np.float32).mean(axis=0)
    elif len(shape) == 3:
        picked = np.asarray(array[band, ::step, ::step], dtype=np.float32)
    else:
        picked = np.asarray(array[::step, ::step], dtype=np.float32)
    if layer.kind == "class":
        picked[picked == (255 if layer.nodata is None else layer.nodata)] = np.nan
    return picked


def scale_of(layer: Mapping[str, Any], values: np.ndarray) -> tuple[float, float]:
    """The value range mapped to 0-255: fixed for probabilities, else the layer's own."""
    if layer["kind"] in FIXED_SCALE:
        return 0.0, 1.0
    if layer["kind"] == "class":
        return 0.0, float(max(1, len(layer.get("classes", [])) - 1))
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return 0.0, 1.0
    lo, hi = float(finite.min()), float(finite.max())
    return lo, hi if hi > lo else lo + 1.0


def grey_png(values: np.ndarray, lo: float, hi: float) -> bytes:
    """``(h, w)`` values as a grey + alpha PNG (transparent where NaN)."""
    valid = np.isfinite(values)
    scaled = np.clip((np.nan_to_num(values, nan=lo) - lo) / (hi - lo), 0.0, 1.0)
    grey = np.round(scaled * 255).astype(np.uint8)
    alpha = np.where(valid, 255, 0).astype(np.uint8)
    return _png(np.stack([grey, alpha]))


def input_png(store: JobStore, record: JobRecord, name: str) -> bytes:
    """A decimated RGB preview of a job's input GeoTIFF's first three bands, stretched 2-98 %.

    The input is user data, so it is read under the same GDAL settings as an upload.
    """
    with rasterio.Env(**HARDENED_GDAL), open_raster(store, record, name, driver="GTiff") as ds:
        h, w = preview_shape(ds.height, ds.width)
        bands = list(range(1, min(3, ds.count) + 1))
        data = ds.read(bands, out_shape=(len(bands), h, w), masked=True)
    rgb = np.ma.filled(data.astype(np.float32), np.nan)
    if rgb.shape[0] < 3:
        rgb = np.repeat(rgb[:1], 3, axis=0)
    out = np.zeros((4, h, w), dtype=np.uint8)
    valid = np.isfinite(rgb).all(axis=0)
    for i in range(3):
        band = rgb[i]
        finite = band[np.isfinite(band)]
        lo, hi = np.percentile(finite, [2, 98]) if finite.size else (0.0, 1.0)
        hi = hi if hi > lo else lo + 1.0
        out[i] = np.round(np.clip((np.nan_to_num(band, nan=lo) - lo) / (hi - lo), 0, 1) * 255)
    out[3] = np.where(valid, 255, 0)
    return _png(out)


def _png(bands: np.ndarray) -> bytes:
    """``(N, h, w)`` uint8 as PNG: 2 bands grey + alpha, 4 bands RGBA (GDAL's PNG driver)."""
    n, h, w = bands.shape
    with warnings.catch_warnings():
        # A preview has no georeference by design.
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with MemoryFile() as mem:
            with mem.open(driver="PNG", width=w, height=h, count=n, dtype="uint8") as dst:
                dst.write(bands)
            return bytes(mem.read())
