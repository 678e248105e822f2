"""Opening uploaded GeoTIFFs: GTiff driver only, checked before reading.

GDAL opens many formats, some of which read other files or URLs (VRT, MRF,
``/vsicurl/``). Uploads reach GDAL only as bytes in memory or as a file the
server itself named (an upload spooled to disk, see
:mod:`service.pipeline.spool`), never as a path or URL a client gave, and are
opened with the GTiff driver under a defensive GDAL configuration (no sidecar
files looked for).
"""

from __future__ import annotations

import contextlib
import re
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import rasterio
from rasterio.enums import ColorInterp, Interleaving, MaskFlags
from rasterio.errors import NotGeoreferencedWarning, RasterioError
from rasterio.io import DatasetReader, MemoryFile

from service.errors import InvalidRaster, PayloadTooLarge, UnsupportedRaster
from service.raster.gdal_env import HARDENED_GDAL, reserve_block_cache
from service.raster.georef import Georeference, usable_georeference

UNREADABLE = "the GeoTIFF's pixel data could not be read: the file is damaged or truncated"
TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


@dataclass(frozen=True)
class RasterInfo:
    """What is known of a raster after opening it, before any pixel is read."""

    width: int
    height: int
    count: int
    dtype: str
    nodata: float | None
    georef: Georeference
    descriptions: list[str | None] = field(default_factory=list)
    dates: list[str] = field(default_factory=list)
    # 1-based indexes of the bands that hold data: every band but an alpha
    # band, which is read as the validity mask instead (as GDAL's own mask).
    indexes: tuple[int, ...] = ()
    alpha: int | None = None
    # Bytes GDAL decodes for one block (a tile or strip, all bands where the
    # file is pixel-interleaved): it decodes whole blocks, however small the
    # raster or the window read.
    block_bytes: int = 0

    @property
    def decoded_bytes(self) -> int:
        """Bytes of the data bands read whole, in the file's dtype."""
        try:
            itemsize = np.dtype(self.dtype).itemsize
        except TypeError:
            itemsize = 16
        return self.width * self.height * self.count * itemsize


@dataclass
class DecodedRaster:
    """A raster read into memory.

    Attributes:
        data: ``(C, H, W)`` in the file's dtype.
        valid: ``(H, W)`` bool, False where the file has no data; None if all valid.
        info: what was known at open.
    """

    data: np.ndarray
    valid: np.ndarray | None
    info: RasterInfo


@dataclass(frozen=True)
class RasterLimits:
    """Bounds checked right after open, before any pixel is decoded."""

    max_pixels: int
    max_bands: int
    max_bytes: int
    # One block of the file, decoded (see RasterInfo.block_bytes); scenes too
    # read block by block, so this holds for them as well.
    max_block_bytes: int = 256 * 2**20


def _require_tiff(data: bytes | Path) -> None:
    if isinstance(data, Path):
        with open(data, "rb") as f:
            data = f.read(len(TIFF_MAGIC[0]))
    if not data:
        raise InvalidRaster("the uploaded file is empty")
    if data[:4] not in TIFF_MAGIC:
        raise InvalidRaster("the uploaded file is not a GeoTIFF (no TIFF signature)")


@contextmanager
def open_geotiff(data: bytes | Path) -> Iterator[DatasetReader]:
    """Open an uploaded GeoTIFF (its bytes, or the file it was spooled to), GTiff driver only.

    Raises:
        InvalidRaster: not a TIFF, or GDAL cannot open it.
    """
    _require_tiff(data)
    # An image without georeference is still an image; the answer says crs null.
    with contextlib.ExitStack() as stack:
        stack.enter_context(warnings.catch_warnings())
        stack.enter_context(rasterio.Env(**HARDENED_GDAL))
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        try:
            if isinstance(data, Path):
                dataset = rasterio.open(data, driver="GTiff")
            else:
                dataset = stack.enter_context(MemoryFile(data)).open(driver="GTiff")
        except RasterioError:
            raise InvalidRaster("the uploaded file could not be opened as a GeoTIFF") from None
        with dataset:
            reserve_block_cache()
            yield dataset


def describe(dataset: DatasetReader) -> RasterInfo:
    """Read a dataset's size, dtype, georeference, bands and block size."""
    dtypes = set(dataset.dtypes)
    if len(dtypes) != 1:
        raise UnsupportedRaster(f"bands have different dtypes ({', '.join(sorted(dtypes))})")
    alpha = _alpha_band(dataset)
    indexes = tuple(i for i in range(1, dataset.count + 1) if i != alpha)
    descriptions = [dataset.descriptions[i - 1] for i in indexes]
    dtype = dtypes.pop()
    return RasterInfo(
        width=dataset.width,
        height=dataset.height,
        count=len(indexes),
        dtype=dtype,
        nodata=dataset.nodata,
        georef=usable_georeference(dataset),
        descriptions=descriptions,
        dates=_band_dates(dataset, indexes, descriptions),
        indexes=indexes,
        alpha=alpha,
        block_bytes=_block_bytes(dataset, dtype),
    )


def _alpha_band(dataset: DatasetReader) -> int | None:
    # One band marked alpha (QGIS, web exports write RGBA) beside data bands.
    alphas = [i + 1 for i, c in enumerate(dataset.colorinterp) if c == ColorInterp.alpha]
    if len(alphas) != 1 or dataset.count < 2:
        return None
    return alphas[0]


def _block_bytes(dataset: DatasetReader, dtype: str) -> int:
    try:
        itemsize = np.dtype(dtype).itemsize
    except TypeError:
        itemsize = 16
    rows, cols = max(dataset.block_shapes, key=lambda shape: shape[0] * shape[1])
    # Pixel-interleaved blocks hold every band; GDAL decodes them all at once.
    per_block = 1 if dataset.interleaving == Interleaving.band else dataset.count
    return int(rows) * int(cols) * itemsize * per_block


def _band_dates(
    dataset: DatasetReader, indexes: tuple[int, ...], descriptions: list[str | None]
) -> list[str]:
    # A date per band, from a DATE/ACQUISITION_DATE band tag or the description.
    dates: list[str] = []
    for band, desc in zip(indexes, descriptions, strict=True):
        tags = {k.upper(): v for k, v in dataset.tags(band).items()}
        text = tags.get("DATE") or tags.get("ACQUISITION_DATE") or desc or ""
        found = _DATE.search(text)
        if found is None:
            return []
        dates.append(found.group(0))
    return dates


def check_limits(info: RasterInfo, limits: RasterLimits) -> None:
    """Refuse rasters too large to decode, before any pixel is read."""
    if info.width <= 0 or info.height <= 0 or info.count <= 0:
        raise InvalidRaster("the raster has no pixels or no bands")
    pixels = info.width * info.height
    if pixels > limits.max_pixels:
        raise PayloadTooLarge(
            f"raster is {info.width}x{info.height} pixels; the limit for this request is "
            f"{limits.max_pixels} pixels",
            width=info.width,
            height=info.height,
        )
    if info.count > limits.max_bands:
        raise UnsupportedRaster(f"raster has {info.count} bands; the limit is {limits.max_bands}")
    try:
        itemsize = np.dtype(info.dtype).itemsize
    except TypeError:
        raise UnsupportedRaster(f"dtype {info.dtype} is not supported") from None
    decoded = pixels * info.count * itemsize
    if decoded > limits.max_bytes:
        raise PayloadTooLarge(
            f"raster would decode to {decoded / 2**20:.0f} MiB; the limit is "
            f"{limits.max_bytes / 2**20:.0f} MiB"
        )
    if info.block_bytes > limits.max_block_bytes:
        raise PayloadTooLarge(
            f"the file's internal blocks (tiles or strips) decode to "
            f"{info.block_bytes / 2**20:.0f} MiB each; the limit is "
            f"{limits.max_block_bytes / 2**20:.0f} MiB: write it with smaller tiles "
            "(e.g. 512 x 512)",
            block_bytes=info.block_bytes,
        )


def read_valid_mask(dataset: DatasetReader, data: np.ndarray) -> np.ndarray | None:
    """``(H, W)`` bool of pixels with data, or None when every pixel has data."""
    valid: np.ndarray | None = None
    # An alpha band shows as a per-dataset mask on the other bands, so
    # dataset_mask() reads it (with any internal mask or nodata).
    if not all(flags == [MaskFlags.all_valid] for flags in dataset.mask_flag_enums):
        valid = dataset.dataset_mask() > 0
    if data.dtype.kind == "f":
        finite = np.isfinite(data).all(axis=0)
        if not finite.all():
            valid = finite if valid is None else valid & finite
    return valid


def read_geotiff(
    data: bytes | Path,
    limits: RasterLimits,
    check: Callable[[RasterInfo], None] | None = None,
) -> DecodedRaster:
    """Open, check and read an uploaded GeoTIFF.

    Args:
        data: the file's bytes, or the file an upload was spooled to.
        limits: size limits checked before reading.
        check: more checks on the open raster (e.g. against a model's
            manifest), run before any pixel is read.

    Raises:
        InvalidRaster: not a GeoTIFF, or unreadable (corrupt, truncated).
        UnsupportedRaster: opens but does not fit (dtype, bands, values).
        PayloadTooLarge: over a limit.
    """
    with open_geotiff(data) as dataset:
        return read_open(dataset, describe(dataset), limits, check)


def read_open(
    dataset: DatasetReader,
    info: RasterInfo,
    limits: RasterLimits,
    check: Callable[[RasterInfo], None] | None = None,
) -> DecodedRaster:
    """Check and read a dataset opened by :func:`open_geotiff` (``info``: its description).

    Same checks and errors as :func:`read_geotiff`, for a caller that looked at
    the header first and decided to read.
    """
    check_limits(info, limits)
    if check is not None:
        check(info)
    try:
        array = dataset.read(list(info.indexes) or None)
        valid = read_valid_mask(dataset, array)
    except RasterioError:
        raise InvalidRaster(UNREADABLE) from None
    return DecodedRaster(array, valid, info)
