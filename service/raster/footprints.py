"""Footprints as GeoJSON polygons, made from a stitched probability raster or class map."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import rasterio
import rasterio.features
import rasterio.warp
from affine import Affine
from scipy import ndimage
from shapely.geometry import mapping, shape

from service.errors import InvalidInput
from service.raster.components import FOUR, TooManyRegions, regions

# (layer name, rows slice, cols slice) -> 2-D float32 values of that window.
WindowReader = Callable[[str, slice, slice], np.ndarray]

# Pixels a side of the squares whose regions are polygonised together (a COG block).
LOCALITY = 512

TOO_SLOW = "making the footprints took too long at these parameters: raise threshold or min_area_px"


@dataclass(frozen=True)
class FootprintOptions:
    """How probabilities become polygons.

    Attributes:
        threshold: probability at or above which a pixel is a building.
        min_area_px: polygons smaller than this many pixels are dropped.
        simplify_px: Douglas-Peucker tolerance, in pixels (0 keeps every vertex).
        native_crs: keep the raster's CRS instead of EPSG:4326 (RFC 7946).
    """

    threshold: float = 0.5
    min_area_px: float = 16.0
    simplify_px: float = 1.0
    native_crs: bool = False

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold < 1.0:
            raise InvalidInput("threshold must be between 0 and 1 (exclusive)")
        if self.min_area_px < 0 or self.simplify_px < 0:
            raise InvalidInput("min_area_px and simplify_px must not be negative")

    def key(self) -> str:
        """A file-name-safe key of these options (for caching)."""
        return (
            f"t{self.threshold:g}-a{self.min_area_px:g}-s{self.simplify_px:g}"
            f"-{'native' if self.native_crs else '4326'}"
        ).replace(".", "p")


def _too_many(max_features: int) -> str:
    return f"more than {max_features} polygons at these parameters: raise threshold or min_area_px"


def _codes(
    values: np.ndarray, options: FootprintOptions, classes: Sequence[str] | None
) -> np.ndarray:
    """A window of the prediction as a uint8 mask: 1 + class index in a class map, 0 none."""
    if classes is None:
        with np.errstate(invalid="ignore"):
            return (values >= options.threshold).astype(np.uint8)
    codes = np.nan_to_num(values, nan=-1.0)
    inside = (codes >= 0) & (codes < len(classes))
    return np.where(inside, codes + 1, 0).astype(np.uint8)


def extract_footprints(
    probability_blocks: Iterable[tuple[int, np.ndarray]],
    height: int,
    width: int,
    transform: tuple[float, ...],
    crs_wkt: str | None,
    read: WindowReader,
    prediction: str,
    attention: list[str],
    options: FootprintOptions,
    max_features: int | None = None,
    deadline: float | None = None,
    classes: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Polygonise buildings of a stitched probability raster, or the classes of a class map.

    The raster is never held whole: its blocks are labelled one at a time
    (regions crossing a block's edge joined, see :mod:`service.raster.components`),
    then each region large enough is polygonised from a window of its own extent.
    The polygons are those GDAL makes of the whole mask (4-connected), in the
    row-major order of their first pixels.

    Args:
        probability_blocks: ``(first row, (rows, width) float32)`` blocks covering
            the raster top to bottom (NaN = nodata).
        height, width: raster size.
        transform: the raster's affine transform ``(a, b, c, d, e, f)``.
        crs_wkt: the raster's CRS (None: pixel coordinates, no reprojection).
        read: reads a window of a layer: each region's prediction and attention.
        prediction: the probability layer's name.
        attention: spatial attention layer names to average per polygon.
        options: threshold, minimum area, simplification, output CRS.
        max_features: most polygons in the answer.
        deadline: ``time.monotonic()`` by which the answer must be made.
        classes: the class names of a class map: the blocks then hold class
            indices (NaN or any other value: none), each polygon is one class's
            region with its ``class`` and ``value``, and ``threshold`` does not
            apply.

    Returns:
        A GeoJSON FeatureCollection (EPSG:4326 unless ``native_crs``).

    Raises:
        InvalidInput: past ``max_features`` or ``deadline``, saying which
            parameters to raise.
    """

    def check_time() -> None:
        if deadline is not None and time.monotonic() > deadline:
            raise InvalidInput(TOO_SLOW)

    def masks() -> Iterator[tuple[int, np.ndarray]]:
        for first, block in probability_blocks:
            check_time()
            yield first, _codes(block, options, classes)

    # A polygon's area is its pixels' (holes are not its pixels): regions under
    # the minimum are dropped, and the limit refused, before any is polygonised.
    # Half a pixel of slack: the exact test is on the polygon's area below.
    try:
        found = regions(masks(), width, options.min_area_px - 0.5, max_features)
    except TooManyRegions:
        raise InvalidInput(_too_many(max_features or 0)) from None
    affine = Affine(*transform[:6])
    pixel_area = abs(affine.a * affine.e - affine.b * affine.d)
    pixel_size = float(np.sqrt(pixel_area))
    projected = crs_wkt is not None and rasterio.crs.CRS.from_wkt(crs_wkt).is_projected
    metres = _metres_per_unit(crs_wkt) if projected and crs_wkt is not None else 1.0
    made: list[tuple[int, dict[str, Any]]] = []
    # Regions block by block (COG blocks of 512 pixels): the windows they read
    # share decoded blocks, which a region order row by row would decode again
    # for each row of pixels with a region starting in it.
    for region in sorted(found, key=lambda r: (r.top // LOCALITY, r.left // LOCALITY, r.first)):
        check_time()
        rows, cols = slice(region.top, region.bottom), slice(region.left, region.right)
        values = read(prediction, rows, cols)
        labels, _ = ndimage.label(_codes(values, options, classes) == region.code, FOUR)
        row, col = region.seed(width)
        inside = labels == labels[row - region.top, col - region.left]
        window = affine * Affine.translation(region.left, region.top)
        # 4-connectivity: buildings touching only at a corner stay apart.
        [(geom, _)] = rasterio.features.shapes(
            inside.view(np.uint8), mask=inside, connectivity=4, transform=window
        )
        poly = shape(geom)
        area_px = poly.area / pixel_area
        if area_px < options.min_area_px:
            continue
        if max_features is not None and len(made) >= max_features:
            raise InvalidInput(_too_many(max_features))
        if options.simplify_px > 0:
            poly = poly.simplify(options.simplify_px * pixel_size, preserve_topology=True)
        props: dict[str, Any] = {}
        if classes is None:
            props["mean_probability"] = _mean(values, inside)
        else:
            props = {"class": classes[region.code - 1], "value": region.code - 1}
        props.update(_attention_stats(read, attention, rows, cols, inside))
        props["area_px"] = round(area_px, 1)
        if projected:
            props["area_m2"] = round(area_px * pixel_area * metres**2, 2)
        made.append(
            (region.first, {"type": "Feature", "geometry": mapping(poly), "properties": props})
        )
    features = [feature for _, feature in sorted(made, key=lambda m: m[0])]
    for i, feature in enumerate(features):
        feature["id"] = i
    collection: dict[str, Any] = {"type": "FeatureCollection", "features": features}
    if crs_wkt is None:
        collection["crs_note"] = "the input had no CRS: coordinates are pixel positions"
        return collection
    if options.native_crs:
        crs = rasterio.crs.CRS.from_wkt(crs_wkt)
        epsg = crs.to_epsg()
        name = f"urn:ogc:def:crs:EPSG::{epsg}" if epsg else crs_wkt
        collection["crs"] = {"type": "name", "properties": {"name": name}}
        return collection
    for feature in features:
        check_time()
        feature["geometry"] = rasterio.warp.transform_geom(
            crs_wkt, "EPSG:4326", feature["geometry"], precision=7
        )
    return collection


def _metres_per_unit(crs_wkt: str) -> float:
    factor = rasterio.crs.CRS.from_wkt(crs_wkt).linear_units_factor[1]
    return float(factor)


def _attention_stats(
    read: WindowReader, attention: list[str], rows: slice, cols: slice, inside: np.ndarray
) -> dict[str, Any]:
    """Each attention layer's mean over a polygon's pixels, and their mean."""
    per_layer = {name: _mean(read(name, rows, cols), inside) for name in attention}
    values = [v for v in per_layer.values() if v is not None]
    return {
        "mean_attention": round(float(np.mean(values)), 4) if values else None,
        "attention": per_layer,
    }


def _mean(values: np.ndarray, inside: np.ndarray) -> float | None:
    picked = values[inside]
    picked = picked[np.isfinite(picked)]
    return round(float(picked.mean()), 4) if picked.size else None
