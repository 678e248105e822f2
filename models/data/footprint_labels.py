"""Read real training data: an image GeoTIFF plus GeoJSON building footprints.

GeoJSON (RFC 7946) coordinates are longitude/latitude in EPSG:4326; files
written before the RFC may name another CRS in a top-level ``crs`` member,
which is honoured. Geometries are reprojected to the raster's CRS with
``rasterio.warp.transform_geom`` and burnt in with
``rasterio.features.rasterize``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio.crs import CRS
from rasterio.errors import CRSError
from rasterio.features import rasterize
from rasterio.warp import transform_geom

GEOJSON_CRS = "EPSG:4326"
POLYGON_TYPES = ("Polygon", "MultiPolygon")


class FootprintLabelError(ValueError):
    """The image or the footprints cannot be turned into a training mask."""


def _geometries(data: Any) -> list[dict[str, Any]]:
    """The polygon geometries of a FeatureCollection, Feature or bare geometry."""
    if not isinstance(data, dict) or "type" not in data:
        raise FootprintLabelError("GeoJSON must be an object with a 'type'")
    kind = data["type"]
    if kind == "FeatureCollection":
        features = data.get("features")
        if not isinstance(features, list):
            raise FootprintLabelError("FeatureCollection has no 'features' list")
        geoms = [f.get("geometry") if isinstance(f, dict) else None for f in features]
    elif kind == "Feature":
        geoms = [data.get("geometry")]
    else:
        geoms = [data]
    out = []
    for i, g in enumerate(geoms):
        if g is None:
            continue  # RFC 7946 allows features without geometry
        if not isinstance(g, dict) or g.get("type") not in POLYGON_TYPES:
            found = g.get("type") if isinstance(g, dict) else type(g).__name__
            raise FootprintLabelError(
                f"feature {i}: footprints must be Polygon or MultiPolygon, got {found}"
            )
        if not isinstance(g.get("coordinates"), list) or not g["coordinates"]:
            raise FootprintLabelError(f"feature {i}: geometry has no coordinates")
        out.append(g)
    if not out:
        raise FootprintLabelError("GeoJSON holds no footprint polygons")
    return out


def _source_crs(data: dict[str, Any]) -> CRS:
    """The CRS of the coordinates: the legacy ``crs`` member if present, else EPSG:4326."""
    member = data.get("crs")
    if member is None:
        return CRS.from_string(GEOJSON_CRS)
    try:
        name = member["properties"]["name"]
        return CRS.from_user_input(name)
    except (KeyError, TypeError, CRSError) as exc:
        raise FootprintLabelError(f"GeoJSON 'crs' member is not understood: {member!r}") from exc


def load_footprints(path: Path) -> tuple[list[dict[str, Any]], CRS]:
    """The footprint polygons of a GeoJSON file and the CRS they are in."""
    try:
        data = json.loads(Path(path).read_text())
    except json.JSONDecodeError as exc:
        raise FootprintLabelError(f"{path.name} is not valid JSON: {exc.msg}") from exc
    return _geometries(data), _source_crs(data)


def read_footprints(
    image_path: Path, labels_path: Path, *, bands: int = 3
) -> tuple[np.ndarray, np.ndarray]:
    """An image and its footprint mask, pixel for pixel.

    Args:
        image_path: a GeoTIFF with a CRS and ``bands`` bands.
        labels_path: GeoJSON footprints (EPSG:4326 unless a ``crs`` member says otherwise).
        bands: the band count the model takes.

    Returns:
        ``(image, mask)``: image ``(C, H, W)`` in the raster's dtype; mask ``(H, W)``
        uint8, 1 inside footprints (pixel centres) and 0 elsewhere.

    Raises:
        FootprintLabelError: the GeoJSON is empty or invalid, the image has the
            wrong band count or no CRS, or no footprint falls on the image.
    """
    geoms, src_crs = load_footprints(labels_path)
    with rasterio.open(image_path) as src:
        if src.count != bands:
            raise FootprintLabelError(
                f"{image_path.name} has {src.count} bands; the model takes {bands}"
            )
        if src.crs is None:
            raise FootprintLabelError(f"{image_path.name} has no CRS to place footprints in")
        image = src.read()
        shapes = [transform_geom(src_crs, src.crs, g) for g in geoms]
        mask = rasterize(
            ((s, 1) for s in shapes),
            out_shape=(src.height, src.width),
            transform=src.transform,
            fill=0,
            dtype="uint8",
        )
    if not mask.any():
        raise FootprintLabelError(
            f"none of the {len(shapes)} footprints in {labels_path.name} overlaps {image_path.name}"
        )
    return image, mask
