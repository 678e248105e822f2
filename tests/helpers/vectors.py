"""Vector downloads opened with GDAL/OGR (pyogrio) and held against the GeoJSON they encode."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pyogrio
import pyogrio.raw
import shapely
from shapely.geometry import shape


def open_vector(data: bytes, path: Path) -> dict[str, Any]:
    """Write ``data`` to ``path`` and open it as OGR does: driver, CRS, fields and polygons."""
    path.write_bytes(data)
    info = pyogrio.read_info(path)
    meta, _, geometry, values = pyogrio.raw.read(path)
    return {
        "driver": info["driver"],
        "layer": pyogrio.list_layers(path)[0][0],
        "crs": meta["crs"],
        "fields": dict(zip(meta["fields"], values, strict=True)),
        "polygons": list(shapely.from_wkb(geometry)),
        # A spatial index answers a bounding box without reading every feature.
        "indexed": info["capabilities"]["fast_spatial_filter"],
    }


def same_as_geojson(opened: dict[str, Any], collection: dict[str, Any]) -> None:
    """Assert the opened file holds ``collection``'s polygons and properties, feature by feature.

    Features pair by their GeoJSON ``id`` (the file's ``id`` field): a spatial
    index may store them in another order.
    """
    features = collection["features"]
    names: list[str] = ["id"]
    for feature in features:
        names.extend(k for k in feature["properties"] if k not in names)
    assert list(opened["fields"]) == names
    assert len(opened["polygons"]) == len(features)
    assert sorted(opened["fields"]["id"]) == sorted(f["id"] for f in features)
    row = {int(fid): n for n, fid in enumerate(opened["fields"]["id"])}
    for i, feature in enumerate(features):
        at = row[feature["id"]]
        assert opened["polygons"][at].equals_exact(shape(feature["geometry"]), 0), i
        for name in names[1:]:
            want, got = feature["properties"].get(name), opened["fields"][name][at]
            if want is None:
                assert got is None or (isinstance(got, float) and math.isnan(got)), (i, name)
            elif isinstance(want, dict | list):
                assert json.loads(got) == want, (i, name)
            else:
                assert got == want, (i, name)
