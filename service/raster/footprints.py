"""Footprints as GeoJSON polygons, made from a stitched probability raster or class map."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import rasterio
import rasterio.features
import rasterio.warp
from affine import Affine
from shapely.geometry import mapping, shape

from service.errors import InvalidInput

# (layer name, rows slice, cols slice) -> 2-D float32 values of that window.
WindowReader = Callable[[str, slice, slice], np.ndarray]

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


def euler_number(mask: np.ndarray, value: int, rows: int = 1024) -> int:
    """Regions minus holes of the pixels of ``mask`` equal to ``value``.

    Regions are 4-connected (as the polygons are), holes 8-connected; counted from
    2 x 2 neighbourhoods (Gray's formula) ``rows`` rows at a time, so a large mask
    costs a block of memory, not a copy. Holes only lower the count, so there are
    at least ``max(0, count)`` regions.
    """
    height, width = mask.shape
    singles = triples = diagonals = 0

    def count(window: np.ndarray) -> None:
        nonlocal singles, triples, diagonals
        a, b = window[:-1, :-1], window[:-1, 1:]
        c, d = window[1:, :-1], window[1:, 1:]
        total = a.astype(np.uint8) + b + c + d
        singles += int(np.count_nonzero(total == 1))
        triples += int(np.count_nonzero(total == 3))
        diagonals += int(np.count_nonzero((total == 2) & (a == d)))

    above = np.zeros(width + 2, dtype=bool)  # the background around the mask
    for start in range(0, height, rows):
        part = mask[start : start + rows]
        window = np.zeros((part.shape[0] + 1, width + 2), dtype=bool)
        window[0] = above
        window[1:, 1:-1] = part == value
        count(window)
        above = window[-1].copy()
    count(np.stack([above, np.zeros_like(above)]))
    return (singles - triples + 2 * diagonals) // 4


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

    Args:
        probability_blocks: ``(first row, (rows, width) float32)`` blocks covering
            the raster top to bottom (NaN = nodata); only a uint8 mask of the
            whole raster is kept.
        height, width: raster size.
        transform: the raster's affine transform ``(a, b, c, d, e, f)``.
        crs_wkt: the raster's CRS (None: pixel coordinates, no reprojection).
        read: reads a window of a layer, for per-polygon statistics.
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

    # 0: no polygon; 1 + class index in a class map.
    mask = np.zeros((height, width), dtype=np.uint8)
    for first, block in probability_blocks:
        check_time()
        rows = slice(first, first + block.shape[0])
        if classes is None:
            with np.errstate(invalid="ignore"):
                mask[rows] = block >= options.threshold
        else:
            codes = np.nan_to_num(block, nan=-1.0)
            inside = (codes >= 0) & (codes < len(classes))
            mask[rows] = np.where(inside, codes + 1, 0)
    if max_features is not None and options.min_area_px <= 1:
        # Every region is then a polygon: refuse at once what would take long to
        # polygonise only to be refused (a noisy mask has hundreds of thousands).
        codes = range(1, 2 if classes is None else len(classes) + 1)
        if sum(max(0, euler_number(mask, code)) for code in codes) > max_features:
            raise InvalidInput(_too_many(max_features))
    affine = Affine(*transform[:6])
    pixel_area = abs(affine.a * affine.e - affine.b * affine.d)
    pixel_size = float(np.sqrt(pixel_area))
    features: list[dict[str, Any]] = []
    # 4-connectivity: buildings touching only at a corner stay apart.
    for geom, code in rasterio.features.shapes(
        mask, mask=mask.astype(bool), connectivity=4, transform=affine
    ):
        check_time()
        poly = shape(geom)
        area_px = poly.area / pixel_area
        if area_px < options.min_area_px:
            continue
        if max_features is not None and len(features) >= max_features:
            raise InvalidInput(_too_many(max_features))
        if options.simplify_px > 0:
            poly = poly.simplify(options.simplify_px * pixel_size, preserve_topology=True)
        if classes is None:
            props = _polygon_stats(geom, affine, height, width, read, prediction, attention)
        else:
            value = int(code) - 1
            props = {"class": classes[value], "value": value}
            props.update(_polygon_stats(geom, affine, height, width, read, None, attention))
        props["area_px"] = round(area_px, 1)
        if crs_wkt is not None and rasterio.crs.CRS.from_wkt(crs_wkt).is_projected:
            props["area_m2"] = round(area_px * pixel_area * _metres_per_unit(crs_wkt) ** 2, 2)
        features.append({"type": "Feature", "geometry": mapping(poly), "properties": props})
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


def _polygon_stats(
    geom: dict[str, Any],
    affine: Affine,
    height: int,
    width: int,
    read: WindowReader,
    prediction: str | None,
    attention: list[str],
) -> dict[str, Any]:
    xs, ys = zip(*[pt for ring in geom["coordinates"] for pt in ring], strict=True)
    inv = ~affine
    cols, rows = zip(*(inv * (x, y) for x, y in zip(xs, ys, strict=True)), strict=True)
    r0, r1 = max(0, int(np.floor(min(rows)))), min(height, int(np.ceil(max(rows))))
    c0, c1 = max(0, int(np.floor(min(cols)))), min(width, int(np.ceil(max(cols))))
    window_transform = affine * Affine.translation(c0, r0)
    inside = rasterio.features.geometry_mask(
        [geom], out_shape=(r1 - r0, c1 - c0), transform=window_transform, invert=True
    )
    rs, cs = slice(r0, r1), slice(c0, c1)
    props: dict[str, Any] = {}
    if prediction is not None:
        props["mean_probability"] = _mean(read(prediction, rs, cs), inside)
    per_layer = {name: _mean(read(name, rs, cs), inside) for name in attention}
    values = [v for v in per_layer.values() if v is not None]
    props["mean_attention"] = round(float(np.mean(values)), 4) if values else None
    props["attention"] = per_layer
    return props


def _mean(values: np.ndarray, inside: np.ndarray) -> float | None:
    picked = values[inside]
    picked = picked[np.isfinite(picked)]
    return round(float(picked.mean()), 4) if picked.size else None
