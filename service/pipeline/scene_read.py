"""Reading a stored scene window by window: tiles, validity and band means."""

from __future__ import annotations

import contextlib
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import rasterio
from rasterio.enums import MaskFlags
from rasterio.errors import NotGeoreferencedWarning, RasterioError
from rasterio.io import DatasetReader
from rasterio.windows import Window

from service.errors import InvalidRaster
from service.raster.decode import UNREADABLE, RasterInfo
from service.raster.gdal_env import HARDENED_GDAL, reserve_block_cache
from service.raster.resample import ModelGridSource
from service.runtime.segmentation import band_means
from service.runtime.tiling import Tile, read_bounds, reflect_pad

# Scene rows GDAL's block cache holds decoded: a tile's window with its halo
# spans two or three rows of 512-pixel blocks and the next grid row is read
# ahead; striped files decode whole strips. Each source block is then decoded
# once, however many overlapping windows read it.
CACHED_SCENE_ROWS = 2048


def scene_cache_bytes(dataset: DatasetReader) -> int:
    """Bytes of decoded blocks a scene's reads keep in GDAL's cache: its widest rows."""
    itemsize = max(np.dtype(d).itemsize for d in dataset.dtypes)
    block_rows = max(rows for rows, _ in dataset.block_shapes)
    rows = max(CACHED_SCENE_ROWS, 4 * block_rows)
    return int(dataset.width * dataset.count * itemsize * min(rows, dataset.height))


# The hardened GDAL environment scenes are read under, one per thread while any
# scene is open on it: scenes run as coroutines on one event loop (several jobs,
# or a shared queue's units and planning) enter and leave in any order, which
# rasterio's nested Envs (a thread's stack) cannot take.
_scene_envs: dict[int, tuple[rasterio.Env, int]] = {}
_scene_envs_lock = threading.Lock()


@contextlib.contextmanager
def scene_env() -> Iterator[None]:
    """The hardened GDAL environment, shared by every scene open on this thread."""
    thread = threading.get_ident()
    with _scene_envs_lock:
        env, users = _scene_envs.get(thread, (None, 0))
        if env is None:
            env = rasterio.Env(**HARDENED_GDAL)
            env.__enter__()
        _scene_envs[thread] = (env, users + 1)
    try:
        yield
    finally:
        with _scene_envs_lock:
            env, users = _scene_envs[thread]
            if users == 1:
                del _scene_envs[thread]
                env.__exit__(None, None, None)
            else:
                _scene_envs[thread] = (env, users - 1)


@contextlib.contextmanager
def open_scene(path: Path) -> Iterator[DatasetReader]:
    """Open a scene file we wrote ourselves, GTiff driver only, hardened GDAL."""
    with warnings.catch_warnings(), scene_env():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        try:
            dataset = rasterio.open(path, driver="GTiff")
        except RasterioError:
            raise InvalidRaster("the uploaded file could not be opened as a GeoTIFF") from None
        with dataset:
            reserve_block_cache(scene_cache_bytes(dataset))
            yield dataset


def all_valid(dataset: DatasetReader) -> bool:
    """Whether every band of a dataset is valid everywhere (no mask, nodata or alpha)."""
    return all(flags == [MaskFlags.all_valid] for flags in dataset.mask_flag_enums)


# Side of the sample of a scene that its band means are taken over.
MEAN_SAMPLE_PX = 2048


def nearest_pixels(size: int, out: int) -> np.ndarray:
    """``(out,)`` source pixels GDAL's nearest-neighbour decimation of ``size`` to ``out`` reads.

    The pixel under each output pixel's centre, as ``GDALRasterBand::IRasterIO``
    picks it (with its small epsilon).
    """
    centres = (np.arange(out) + 0.5) * (size / out) + 1e-10
    return np.minimum(centres.astype(np.int64), size - 1)


def scene_band_mean(ds: DatasetReader, info: RasterInfo, valid_everywhere: bool) -> np.ndarray:
    """``(C,)`` mean of each band over the scene's valid pixels.

    Taken over at most 2048 pixels a side (exact for smaller scenes), so that
    every tile gets the band statistics the whole scene would: the pixels
    GDAL's nearest-neighbour decimation picks. A file without overviews is read
    one sampled row at a time, each source block decoded once, so that neither
    a decimated read's temporaries nor the scene's width weigh on memory; a
    file with overviews is read decimated, from them, as before.
    """
    scale = max(1, -(-max(info.width, info.height) // MEAN_SAMPLE_PX))
    shape = (info.count, max(1, info.height // scale), max(1, info.width // scale))
    indexes = list(info.indexes) or None
    try:
        if ds.overviews(1):
            data = ds.read(indexes, out_shape=shape)
            mask = None if valid_everywhere else ds.dataset_mask(out_shape=shape[1:])
        else:
            data, mask = _sample_rows(ds, indexes, shape, valid_everywhere)
    except RasterioError:
        raise InvalidRaster(UNREADABLE) from None
    valid = None if mask is None else mask > 0
    if data.dtype.kind == "f":
        finite = np.ones(shape[1:], bool)
        for band in data:
            finite &= np.isfinite(band.astype(np.float32, copy=False))
        valid = finite if valid is None else valid & finite
    use = valid if valid is not None and valid.any() else None
    means = []
    # Band by band: one band's float32 values at a time (the sample's own, where
    # it is float32), its mean as band_means takes it.
    for band in data:
        values = np.nan_to_num(band.astype(np.float32, copy=False), copy=False)
        means.append(band_means(values[None], use)[0])
    return np.array(means, dtype=np.float32)


def _sample_rows(
    ds: DatasetReader, indexes: list[int] | None, shape: tuple[int, int, int], all_valid: bool
) -> tuple[np.ndarray, np.ndarray | None]:
    """The decimated ``(C, h, w)`` sample and ``(h, w)`` mask, read row by sampled row."""
    rows = nearest_pixels(ds.height, shape[1])
    cols = nearest_pixels(ds.width, shape[2])
    data: np.ndarray | None = None
    mask = None if all_valid else np.empty(shape[1:], np.uint8)
    for i, row in enumerate(rows.tolist()):
        # GDAL's block cache keeps the decoded blocks of this row for the next.
        line = Window(0, row, ds.width, 1)
        values = ds.read(indexes, window=line)[:, 0, cols]
        if data is None:
            data = np.empty(shape, values.dtype)
        data[:, i] = values
        if mask is not None:
            mask[i] = ds.dataset_mask(window=line)[0, cols]
    assert data is not None  # a raster has at least one row
    return data, mask


def read_window(
    ds: DatasetReader, info: RasterInfo, window: Window, valid_everywhere: bool
) -> tuple[np.ndarray, np.ndarray]:
    """A window's ``(C, h, w)`` data bands, in the file's dtype, and ``(h, w)`` validity.

    A pixel is invalid where the file masks it (mask, nodata or alpha band) or
    where a float band is not finite.
    """
    try:
        # Data bands only: an alpha band is read as the mask below.
        data = ds.read(list(info.indexes) or None, window=window)
        valid = (
            np.ones(data.shape[1:], bool)
            if valid_everywhere
            else ds.dataset_mask(window=window) > 0
        )
    except RasterioError:
        raise InvalidRaster(UNREADABLE) from None
    if data.dtype.kind == "f":
        valid &= np.isfinite(data).all(axis=0)
    return data, valid


def read_tile(
    ds: DatasetReader,
    tile: Tile,
    info: RasterInfo,
    valid_everywhere: bool,
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
    if source is not None:
        # Its values are means of finite pixels only, wherever it calls them valid.
        data, valid = source.read(y0, y1, x0, x1)
    else:
        data, valid = read_window(ds, info, Window(x0, y0, x1 - x0, y1 - y0), valid_everywhere)
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
