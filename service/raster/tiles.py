"""Web Mercator map tiles of a raster band, coloured by what its values are, with rio-tiler."""

from __future__ import annotations

import contextlib
import functools
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import morecantile
import numpy as np
import rasterio
from affine import Affine
from rasterio.enums import Resampling
from rasterio.io import DatasetReader, MemoryFile
from rio_tiler.colormap import cmap
from rio_tiler.errors import NoOverviewWarning, TileOutsideBounds
from rio_tiler.io import Reader
from rio_tiler.models import ImageData
from rio_tiler.types import ColorMapType
from rio_tiler.utils import render

from service.raster.georef import Georeference

WEB_MERCATOR = morecantile.tms.get("WebMercatorQuad")
TILE_SIZE = 256
MAX_ZOOM = 24
# Largest side of a whole-layer preview image.
PREVIEW_SIZE = 1024
FORMATS = {"png": "PNG", "webp": "WEBP"}
# Probabilities and attention: a perceptual map over the fixed range 0-1, so
# that the same colour means the same value in every job and every tile.
CONTINUOUS = cmap.get("viridis")
# Class maps: Tableau's ten categorical colours, by class index (repeating past
# ten), where a manifest names no class_colors.
CLASS_COLOURS = (
    "4e79a7",
    "f28e2b",
    "e15759",
    "76b7b2",
    "59a14f",
    "edc948",
    "b07aa1",
    "ff9da7",
    "9c755f",
    "bab0ac",
)
# The value a class raster holds where there is no class.
CLASS_NODATA = 255


# Band names that hold red, green and blue light: colour names, and Sentinel-2's
# and Landsat 8/9's band numbers.
RGB_NAMES = (
    ("red", "r", "b4", "b04", "sr_b4"),
    ("green", "g", "b3", "b03", "sr_b3"),
    ("blue", "b", "b2", "b02", "sr_b2"),
)


def rgb_indexes(names: Sequence[str], count: int) -> list[int]:
    """The 1-based bands of an image to show as red, green and blue.

    ``names`` are the image's bands in order (a model's bands, whose first date
    comes first in a stack). All three colours named: those bands; only red:
    red as grey; none: the first (up to) three bands.
    """
    lowered = [n.lower() for n in names]
    found = [
        next((i + 1 for i, n in enumerate(lowered) if n in colour), None) for colour in RGB_NAMES
    ]
    picked = [i for i in found if i is not None and i <= count]
    if len(picked) == 3:
        return picked
    if found[0] is not None and found[0] <= count:
        return [found[0]]
    return list(range(1, min(3, count) + 1))


def colormap_stops(count: int = 11) -> list[str]:
    """``#rrggbb`` of the continuous colour map at ``count`` even steps of 0-1, for legends."""
    steps = np.linspace(0, 255, count).round().astype(int)
    return ["#{:02x}{:02x}{:02x}".format(*CONTINUOUS[int(i)][:3]) for i in steps]


def class_colour(index: int) -> str:
    """The ``RRGGBB`` colour of class ``index``."""
    return CLASS_COLOURS[index % len(CLASS_COLOURS)]


def class_colormap(count: int, colours: Sequence[str] = ()) -> dict[int, tuple[int, int, int, int]]:
    """RGBA colours of classes ``0 .. count - 1``: ``colours`` (``#rrggbb``) or the palette."""
    out = {}
    for i in range(count):
        hex_ = colours[i].lstrip("#") if i < len(colours) else class_colour(i)
        out[i] = (int(hex_[:2], 16), int(hex_[2:4], 16), int(hex_[4:], 16), 255)
    return out


@dataclass(frozen=True)
class BandStyle:
    """How one band becomes coloured pixels.

    Attributes:
        band: the band's index in its raster (1-based).
        classes: the class count of a class map (its values are class indices);
            None for continuous values in 0-1 (float, or uint8 0-255 = 0-1).
        colours: ``#rrggbb`` per class (the palette where there are none).
    """

    band: int
    classes: int | None = None
    colours: tuple[str, ...] = ()


@functools.cache
def _transparent(size: int, fmt: str) -> bytes:
    """An RGBA tile with nothing on it."""
    return render(
        np.zeros((3, size, size), np.uint8), np.zeros((size, size), np.uint8), img_format=fmt
    )


def colour(image: ImageData, style: BandStyle, fmt: str) -> bytes:
    """A one-band tile as an RGBA image: nodata and pixels outside the raster transparent."""
    data = image.array[0]
    valid = ~np.ma.getmaskarray(data)
    colormap: ColorMapType
    if style.classes is not None:
        index = np.where(valid, data.filled(CLASS_NODATA), CLASS_NODATA).astype(np.uint8)
        colormap = class_colormap(style.classes, style.colours)
    else:
        values = np.ma.getdata(data)
        if values.dtype != np.uint8:
            # Floats in 0-1 (NaN where there is no data) to the colour map's 256 steps.
            finite = np.isfinite(values)
            valid &= finite
            values = np.clip(np.where(finite, values, 0) * 255.0 + 0.5, 0, 255)
        index = values.astype(np.uint8)
        colormap = CONTINUOUS
    mask = np.where(valid, 255, 0).astype(np.uint8)
    return render(index[None], mask, img_format=fmt, colormap=colormap)


def check_tile(z: int, x: int, y: int) -> None:
    """Refuse tile indices outside Web Mercator's matrix at zoom ``z`` (ValueError)."""
    if not 0 <= z <= MAX_ZOOM:
        raise ValueError(f"zoom must be 0 to {MAX_ZOOM}, not {z}")
    side = 2**z
    if not (0 <= x < side and 0 <= y < side):
        raise ValueError(f"tile x and y must be 0 to {side - 1} at zoom {z}")


class TileReader:
    """Tiles, bounds and zoom levels of one open raster (rio-tiler's Reader over it)."""

    def __init__(self, dataset: DatasetReader) -> None:
        with warnings.catch_warnings():
            # Small rasters need no overviews.
            warnings.simplefilter("ignore", NoOverviewWarning)
            self._reader = Reader(None, dataset=dataset)

    @property
    def minzoom(self) -> int:
        """The coarsest zoom worth serving (the raster covers about one tile)."""
        return int(self._reader.minzoom)

    @property
    def maxzoom(self) -> int:
        """The zoom whose pixels match the raster's resolution."""
        return int(self._reader.maxzoom)

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """``(west, south, east, north)`` in EPSG:4326 degrees."""
        west, south, east, north = self._reader.get_geographic_bounds(
            rasterio.crs.CRS.from_epsg(4326)
        )
        return float(west), float(south), float(east), float(north)

    def _read_tile(
        self, z: int, x: int, y: int, indexes: int | Sequence[int], resampling: str
    ) -> ImageData | None:
        """Bands ``indexes`` of tile ``z/x/y``; None where the tile is off the raster."""
        check_tile(z, x, y)
        try:
            return self._reader.tile(
                x,
                y,
                z,
                tilesize=TILE_SIZE,
                indexes=indexes,
                resampling_method=resampling,
                reproject_method=resampling,
            )
        except TileOutsideBounds:
            return None

    def tile(self, z: int, x: int, y: int, style: BandStyle, fmt: str) -> bytes:
        """Tile ``z/x/y`` of a band as PNG or WEBP; a tile off the raster is transparent."""
        # Nearest: class values and attention cells stay what they are.
        image = self._read_tile(z, x, y, style.band, "nearest")
        if image is None:
            return _transparent(TILE_SIZE, FORMATS[fmt])
        return colour(image, style, FORMATS[fmt])

    def rgb_tile(
        self,
        z: int,
        x: int,
        y: int,
        bands: Sequence[int],
        ranges: Sequence[tuple[float, float]],
        fmt: str,
    ) -> bytes:
        """Tile ``z/x/y`` of ``bands`` (up to three, 1-based) as RGB stretched over ``ranges``."""
        image = self._read_tile(z, x, y, list(bands), "bilinear")
        if image is None:
            return _transparent(TILE_SIZE, FORMATS[fmt])
        return colour_rgb(image, ranges, FORMATS[fmt])

    def rgb_preview(
        self, bands: Sequence[int], ranges: Sequence[tuple[float, float]], fmt: str
    ) -> bytes:
        """``bands`` (up to three) as one RGB image, as :meth:`preview`."""
        image = self._reader.preview(indexes=list(bands), max_size=PREVIEW_SIZE)
        return colour_rgb(image, ranges, FORMATS[fmt])

    def preview(self, style: BandStyle, fmt: str, max_size: int = PREVIEW_SIZE) -> bytes:
        """The whole band in its own CRS, at most ``max_size`` pixels a side (from overviews)."""
        image = self._reader.preview(
            indexes=style.band, max_size=max_size, resampling_method="nearest"
        )
        return colour(image, style, FORMATS[fmt])


def stretch(dataset: DatasetReader, bands: Sequence[int]) -> list[tuple[float, float]]:
    """Each band's 2nd and 98th percentiles, from a read of at most 512 pixels a side."""
    scale = max(1.0, max(dataset.width, dataset.height) / 512)
    shape = (len(bands), max(1, int(dataset.height / scale)), max(1, int(dataset.width / scale)))
    data = dataset.read(list(bands), out_shape=shape, masked=True)
    ranges = []
    for band in data:
        values = np.ma.compressed(band).astype(np.float64)
        values = values[np.isfinite(values)]
        lo, hi = np.percentile(values, [2, 98]) if values.size else (0.0, 1.0)
        ranges.append((float(lo), float(hi) if hi > lo else float(lo) + 1.0))
    return ranges


def colour_rgb(image: ImageData, ranges: Sequence[tuple[float, float]], fmt: str) -> bytes:
    """Up to three bands as RGB, each stretched over its range; one band as grey."""
    data = image.array
    valid = ~np.ma.getmaskarray(data).any(axis=0)
    out = np.zeros((3, *data.shape[1:]), np.uint8)
    for i in range(3):
        band = np.ma.getdata(data[min(i, data.shape[0] - 1)]).astype(np.float32)
        lo, hi = ranges[min(i, len(ranges) - 1)]
        out[i] = np.round(np.clip((np.nan_to_num(band, nan=lo) - lo) / (hi - lo), 0, 1) * 255)
    return render(out, np.where(valid, 255, 0).astype(np.uint8), img_format=fmt)


def array_raster(bands: np.ndarray, georef: Georeference, categorical: bool) -> bytes:
    """``(n, h, w)`` values as a tiled GeoTIFF with overviews, in memory, for tiling.

    Continuous values in 0-1 (NaN: no data) are kept as uint8 0-255 with a mask
    (the colour map has 256 steps anyway); class indices as uint8 with
    ``CLASS_NODATA``.
    """
    count, height, width = bands.shape
    profile: dict[str, Any] = {
        "driver": "GTiff",
        "width": width,
        "height": height,
        "count": count,
        "dtype": "uint8",
        "crs": rasterio.crs.CRS.from_wkt(georef.crs) if georef.crs else None,
        "transform": Affine(*georef.transform),
        "tiled": True,
        "blockxsize": TILE_SIZE,
        "blockysize": TILE_SIZE,
        "compress": "deflate",
        "zlevel": 1,
    }
    if categorical:
        profile["nodata"] = CLASS_NODATA
        values = np.where(np.isfinite(bands), bands, CLASS_NODATA).astype(np.uint8)
        valid = None
    else:
        finite = np.isfinite(bands)
        values = np.clip(np.where(finite, bands, 0) * 255.0 + 0.5, 0, 255).astype(np.uint8)
        valid = np.where(finite.all(axis=0), 255, 0).astype(np.uint8)
    factors = []
    factor = 2
    while max(width, height) // (factor // 2) > TILE_SIZE:
        factors.append(factor)
        factor *= 2
    with (
        rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True),
        MemoryFile() as memory,
    ):
        with memory.open(**profile) as dst:
            dst.write(values)
            if valid is not None:
                dst.write_mask(valid)
            if factors:
                dst.build_overviews(factors, Resampling.mode if categorical else Resampling.average)
        return bytes(memory.read())


@contextlib.contextmanager
def open_bytes(data: bytes) -> Iterator[DatasetReader]:
    """A raster held in memory, open for reading."""
    with MemoryFile(data) as memory, memory.open() as dataset:
        yield dataset


def web_mercator_matrices(maxzoom: int) -> Sequence[Any]:
    """Web Mercator's tile matrices from zoom 0 to ``maxzoom`` (morecantile's)."""
    return [WEB_MERCATOR.matrix(z) for z in range(maxzoom + 1)]
