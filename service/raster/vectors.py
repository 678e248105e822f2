"""Footprints GeoJSON re-encoded as GeoPackage or FlatGeobuf, the files GIS tools open.

Written by pyogrio, GDAL/OGR's own drivers: a GeoPackage or FlatGeobuf writer
is no place for hand-written code. Its wheels bundle GDAL, so no system GDAL is
needed, and it writes arrays without pandas or GeoPandas. Each file
holds one layer, ``footprints``, of the GeoJSON's features, with each feature's
GeoJSON ``id`` as an ``id`` field (the FlatGeobuf carries a packed Hilbert R-tree
so that GIS tools read a bounding box with range requests, and that index
orders its features by place, not as the GeoJSON does) and the GeoJSON's
properties as attributes: numbers as integer or real fields, nested
values (the per-layer ``attention`` means) as JSON text, as OGR reads them
from the GeoJSON. The CRS is the GeoJSON's: EPSG:4326, or the job's own with
``crs=native``; a job without a georeference gets none (its coordinates are
pixel positions, which no CRS describes).
"""

from __future__ import annotations

import io
import json
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyogrio.raw
import shapely
from shapely.geometry import shape

from service.errors import InvalidInput


@dataclass(frozen=True)
class VectorFormat:
    """A footprints download format.

    Attributes:
        name: the ``format`` query value.
        media_type: the answer's Content-Type.
        extension: the download's file extension.
        driver: the OGR driver writing it (None: the GeoJSON as made).
    """

    name: str
    media_type: str
    extension: str
    driver: str | None


VECTOR_FORMATS = {
    f.name: f
    for f in (
        VectorFormat("geojson", "application/geo+json", "geojson", None),
        VectorFormat("gpkg", "application/geopackage+sqlite3", "gpkg", "GPKG"),
        VectorFormat("fgb", "application/vnd.flatgeobuf", "fgb", "FlatGeobuf"),
    )
}
LAYER = "footprints"
# Layer creation options per driver.
_LAYER_OPTIONS: dict[str, dict[str, str]] = {"FlatGeobuf": {"SPATIAL_INDEX": "YES"}}


def vector_format(format_: str | None, accept: str | None) -> VectorFormat:
    """The format a request asks for: ``format`` first, else the Accept header's first type.

    Raises:
        InvalidInput: an unknown ``format``, naming the known ones.
    """
    if format_ is not None:
        found = VECTOR_FORMATS.get(format_.lower())
        if found is None:
            known = ", ".join(VECTOR_FORMATS)
            raise InvalidInput(f"format must be one of {known}, not {format_!r}")
        return found
    if accept:
        first = accept.split(",")[0].split(";")[0].strip().lower()
        for known_format in VECTOR_FORMATS.values():
            if first == known_format.media_type:
                return known_format
    return VECTOR_FORMATS["geojson"]


def encode(geojson: bytes, format_: VectorFormat) -> bytes:
    """A footprints FeatureCollection (GeoJSON bytes) as a file of ``format_``."""
    if format_.driver is None:
        return geojson
    collection = json.loads(geojson)
    features = collection["features"]
    ids = [f.get("id") for f in features]
    rows = [
        {"id": i, **f["properties"]} if isinstance(i, int) else f["properties"]
        for i, f in zip(ids, features, strict=True)
    ]
    names, columns, masks = _fields(rows)
    geometries = [shape(f["geometry"]) for f in features]
    kinds = {g.geom_type for g in geometries}
    out = io.BytesIO()
    with warnings.catch_warnings():
        # No CRS is the intended answer for a job without a georeference.
        warnings.filterwarnings("ignore", "'crs' was not provided", UserWarning)
        pyogrio.raw.write(
            out,
            shapely.to_wkb(np.array(geometries, dtype=object)),
            columns,
            names,
            field_mask=masks,
            layer=LAYER,
            driver=format_.driver,
            geometry_type="Polygon" if kinds <= {"Polygon"} else "MultiPolygon",
            crs=_crs(collection),
            layer_options=_LAYER_OPTIONS.get(format_.driver),
        )
    return out.getvalue()


def _crs(collection: dict[str, Any]) -> str | None:
    """The collection's CRS as OGR takes it: RFC 7946's EPSG:4326 unless it names another."""
    if "crs_note" in collection:  # pixel coordinates
        return None
    named = collection.get("crs")
    return str(named["properties"]["name"]) if named else "EPSG:4326"


def _fields(
    rows: list[dict[str, Any]],
) -> tuple[list[str], list[np.ndarray], list[np.ndarray | None]]:
    """Columns of the features' properties: names, values and null masks.

    A property of integers only is an int64 column, of numbers a float64
    one, anything else text (dicts and lists as JSON); a missing value is null.
    """
    names: list[str] = []
    for row in rows:
        names.extend(k for k in row if k not in names)
    columns: list[np.ndarray] = []
    masks: list[np.ndarray | None] = []
    for name in names:
        values = [row.get(name) for row in rows]
        null = np.array([v is None for v in values], dtype=bool)
        present = [v for v in values if v is not None]
        if present and all(isinstance(v, int) for v in present):
            columns.append(np.array([0 if v is None else v for v in values], dtype=np.int64))
        elif present and all(isinstance(v, int | float) for v in present):
            columns.append(np.array([np.nan if v is None else v for v in values], np.float64))
        else:
            columns.append(np.array([_text(v) for v in values], dtype=object))
        masks.append(null if null.any() else None)
    return names, columns, masks


def _text(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"))
