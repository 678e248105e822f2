"""Opening uploaded GeoTIFFs: from memory, GTiff driver only, checked before reading.

GDAL opens many formats, some of which read other files or URLs (VRT, MRF,
``/vsicurl/``). Uploads never reach GDAL as a path, only as bytes in memory
opened with the GTiff driver, under a defensive GDAL configuration.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import rasterio
from rasterio.enums import MaskFlags
from rasterio.errors import NotGeoreferencedWarning, RasterioError
from rasterio.io import DatasetReader, MemoryFile

from service.errors import InvalidRaster, PayloadTooLarge, UnsupportedRaster

# Drivers that read other files or URLs; never registered (see disable_risky_drivers).
SKIPPED_DRIVERS = "VRT MRF WMS WCS WFS HTTP DAAS EEDA PLMosaic OGCAPI STACIT STACTA"

# Applied around every open and read of user data.
HARDENED_GDAL: dict[str, Any] = {
    "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
    "GDAL_PAM_ENABLED": "NO",
    "CPL_VSIL_CURL_ALLOWED_EXTENSIONS": ".attnserve-no-remote",
    "GDAL_HTTP_MAX_RETRY": "0",
    "GDAL_CACHEMAX": 256,
    "GTIFF_REPORT_COMPD_CS": "NO",
    "CPL_DEBUG": "OFF",
    # Belt and braces should a VRT ever be opened: no Python pixel functions,
    # no raw bands reading arbitrary local files.
    "GDAL_VRT_ENABLE_PYTHON": "NO",
    "VRT_ENABLE_RAWRASTERBAND": "NO",
}


def disable_risky_drivers() -> None:
    """Keep GDAL from ever registering drivers that read other files or URLs.

    GDAL reads ``GDAL_SKIP`` once, when it first registers its drivers; setting
    it later has no effect on a process that already opened anything (and only
    logs a warning per open for drivers this build lacks). The server entry
    point calls this before any raster is touched, so the skip holds
    process-wide.
    """
    os.environ.setdefault("GDAL_SKIP", SKIPPED_DRIVERS)


UNREADABLE = "the GeoTIFF's pixel data could not be read: the file is damaged or truncated"
TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


@dataclass(frozen=True)
class Georeference:
    """Where a raster lies: CRS (WKT, None if absent), affine transform and size."""

    crs: str | None
    transform: tuple[float, float, float, float, float, float]
    width: int
    height: int

    def to_json(self) -> dict[str, Any]:
        """The georeference as JSON (``crs`` as an ``EPSG:`` code where one fits)."""
        crs = None
        if self.crs:
            parsed = rasterio.crs.CRS.from_wkt(self.crs)
            epsg = parsed.to_epsg()
            crs = f"EPSG:{epsg}" if epsg else self.crs
        return {
            "crs": crs,
            "transform": list(self.transform),
            "width": self.width,
            "height": self.height,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Georeference:
        """Inverse of :meth:`to_json`."""
        crs = data.get("crs")
        wkt = rasterio.crs.CRS.from_user_input(crs).to_wkt() if crs else None
        a, b, c, d, e, f = (float(v) for v in data["transform"])
        return cls(wkt, (a, b, c, d, e, f), int(data["width"]), int(data["height"]))


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


def _require_tiff(data: bytes) -> None:
    if not data:
        raise InvalidRaster("the uploaded file is empty")
    if data[:4] not in TIFF_MAGIC:
        raise InvalidRaster("the uploaded file is not a GeoTIFF (no TIFF signature)")


@contextmanager
def open_geotiff(data: bytes) -> Iterator[DatasetReader]:
    """Open GeoTIFF bytes from memory with the GTiff driver only.

    Raises:
        InvalidRaster: not a TIFF, or GDAL cannot open it.
    """
    _require_tiff(data)
    # An image without georeference is still an image; the answer says crs null.
    with warnings.catch_warnings(), rasterio.Env(**HARDENED_GDAL), MemoryFile(data) as memfile:
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        try:
            dataset = memfile.open(driver="GTiff")
        except RasterioError:
            raise InvalidRaster("the uploaded file could not be opened as a GeoTIFF") from None
        with dataset:
            yield dataset


def describe(dataset: DatasetReader) -> RasterInfo:
    """Read a dataset's size, dtype, georeference and band descriptions."""
    dtypes = set(dataset.dtypes)
    if len(dtypes) != 1:
        raise UnsupportedRaster(f"bands have different dtypes ({', '.join(sorted(dtypes))})")
    t = dataset.transform
    georef = Georeference(
        crs=dataset.crs.to_wkt() if dataset.crs else None,
        transform=(t.a, t.b, t.c, t.d, t.e, t.f),
        width=dataset.width,
        height=dataset.height,
    )
    descriptions = list(dataset.descriptions)
    return RasterInfo(
        width=dataset.width,
        height=dataset.height,
        count=dataset.count,
        dtype=dtypes.pop(),
        nodata=dataset.nodata,
        georef=georef,
        descriptions=descriptions,
        dates=_band_dates(dataset, descriptions),
    )


def _band_dates(dataset: DatasetReader, descriptions: list[str | None]) -> list[str]:
    # A date per band, from a DATE/ACQUISITION_DATE band tag or the description.
    dates: list[str] = []
    for band, desc in enumerate(descriptions, start=1):
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


def read_valid_mask(dataset: DatasetReader, data: np.ndarray) -> np.ndarray | None:
    """``(H, W)`` bool of pixels with data, or None when every pixel has data."""
    valid: np.ndarray | None = None
    if not all(flags == [MaskFlags.all_valid] for flags in dataset.mask_flag_enums):
        valid = dataset.dataset_mask() > 0
    if data.dtype.kind == "f":
        finite = np.isfinite(data).all(axis=0)
        if not finite.all():
            valid = finite if valid is None else valid & finite
    return valid


def read_geotiff(
    data: bytes,
    limits: RasterLimits,
    check: Callable[[RasterInfo], None] | None = None,
) -> DecodedRaster:
    """Open, check and read an uploaded GeoTIFF.

    Args:
        data: the file's bytes.
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
        array = dataset.read()
        valid = read_valid_mask(dataset, array)
    except RasterioError:
        raise InvalidRaster(UNREADABLE) from None
    return DecodedRaster(array, valid, info)
