"""Reading a stored job's raster layers, whether kept as ``.npy`` or as COG bands."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, Protocol

import numpy as np
from rasterio.io import DatasetReader
from rasterio.windows import Window

from service.errors import InvalidInput
from service.jobs.rasters import open_raster
from service.jobs.record import JobRecord, Layer
from service.jobs.store import JobStore
from service.raster.cog import read_band
from service.runtime.segmentation import upsample


class ArraySource(Protocol):
    """Where a job's stored arrays are read from (a :class:`JobStore`, or a wrapper)."""

    def array(self, record: JobRecord, name: str) -> np.ndarray:
        """One stored array of a job (read-only)."""
        ...


def served_values(record: JobRecord, source: ArraySource, name: str) -> np.ndarray:
    """A stored layer's values on the job's grid.

    A coarse map (a layer with a ``stride``) is stored at its own resolution; it
    is upsampled here to the layer's shape and masked where its ``mask`` layer
    has no data. Every other layer is returned as stored (read-only).
    """
    layer = record.layer(name)
    array = source.array(record, name)
    stride = layer.stride or 1
    if stride == 1:
        return array
    height, width = layer.shape[-2:]
    if array.ndim == 3:  # (heads, h, w)
        values = np.stack([upsample(a, stride, height, width) for a in array])
    else:
        values = upsample(array, stride, height, width)
    if layer.mask:
        values[..., np.isnan(source.array(record, layer.mask))] = np.nan
    return values


def pick_head(
    layer: Layer, values: np.ndarray, head: int | None
) -> tuple[np.ndarray, str | int | None]:
    """One head of a multi-head layer's ``(heads, ...)`` values, or their mean by default.

    Returns:
        The values without their head axis, and which: the head, ``"mean"``, or
        None for a layer of one head (its values as they are).

    Raises:
        InvalidInput: ``head`` is out of range, or asked of a layer with one head.
    """
    heads = layer.heads or 1
    if head is not None and heads == 1:
        raise InvalidInput(
            f"head {head}: layer {layer.name!r} has a single head; leave head out",
            layer=layer.name,
        )
    if head is not None and not 0 <= head < heads:
        raise InvalidInput(
            f"head {head} is out of range: layer {layer.name!r} has {heads} heads, "
            f"0 to {heads - 1}",
            layer=layer.name,
            heads=heads,
        )
    if heads == 1:
        return values, None
    if head is None:
        return np.asarray(values, dtype=np.float32).mean(axis=0), "mean"
    return np.asarray(values[head]), head


class LayerReader:
    """Windows of a job's 2-D layers (NaN where there is no data).

    Use as a context manager: COG files are opened once and closed at exit.
    """

    def __init__(self, record: JobRecord, store: JobStore) -> None:
        self.record = record
        self.store = store
        self._stack = contextlib.ExitStack()
        self._open: dict[str, DatasetReader] = {}
        self._values: dict[str, np.ndarray] = {}

    def __enter__(self) -> LayerReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def _dataset(self, file: str) -> DatasetReader:
        if file not in self._open:
            # NotFound when the job was deleted after its record was read.
            dataset = open_raster(self.store, self.record, file, driver="GTiff")
            self._open[file] = self._stack.enter_context(dataset)
        return self._open[file]

    def read(self, name: str, rows: slice, cols: slice, band: int | None = None) -> np.ndarray:
        """``(h, w)`` float32 of a layer's window (one band of 3-D layers)."""
        layer = self.record.layer(name)
        if layer.storage == "cog" and layer.file is not None:
            ds = self._dataset(layer.file)
            index = band + 1 if band is not None else (layer.band or 1)
            window = Window(cols.start, rows.start, cols.stop - cols.start, rows.stop - rows.start)
            return read_band(ds, index, layer.kind == "class", window=window)
        if name not in self._values:
            # Maps of several heads are read as their mean, as they are shown by default.
            values = served_values(self.record, self.store, name)
            self._values[name] = pick_head(layer, values, None)[0]
        array = self._values[name]
        if band is not None:
            array = array[band]
        return np.asarray(array[rows, cols], dtype=np.float32)

    def blocks(self, name: str, rows: int = 512) -> Iterator[tuple[int, np.ndarray]]:
        """The whole layer, ``rows`` at a time: ``(first row, (rows, width))``."""
        height, width = self.size
        for first in range(0, height, rows):
            stop = min(height, first + rows)
            yield first, self.read(name, slice(first, stop), slice(0, width))

    @property
    def size(self) -> tuple[int, int]:
        """``(height, width)`` of the job's rasters."""
        georef: dict[str, Any] = self.record.georef or {}
        return int(georef["height"]), int(georef["width"])
