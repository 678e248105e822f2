"""What a stored job looks like to a client: JSON summaries and GeoTIFF bands."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import numpy as np

from service.errors import InvalidInput, NotFound
from service.jobs.store import JobRecord, JobStore
from service.raster.decode import Georeference
from service.raster.encode import encode_geotiff


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


def links(record: JobRecord) -> dict[str, str]:
    """URLs of a job's resources."""
    base = {
        "self": f"/jobs/{record.id}",
        "attention": f"/attention/{record.id}",
        "prediction": f"/jobs/{record.id}/prediction",
    }
    if record.kind == "raster":
        base["prediction_geotiff"] = f"/jobs/{record.id}/prediction?format=geotiff"
        base["attention_geotiff"] = f"/attention/{record.id}?format=geotiff"
    return base


def _public(layer: dict[str, Any], record: JobRecord) -> dict[str, Any]:
    entry = {k: v for k, v in layer.items() if k not in ("days",)}
    if layer["role"] == "attention":
        entry["url"] = f"/attention/{record.id}/{layer['name']}"
    return entry


def job_json(record: JobRecord, store: JobStore) -> dict[str, Any]:
    """A job as the JSON answer of ``/predict`` and ``GET /jobs/{id}``."""
    prediction = [layer for layer in record.layers if layer["role"] == "prediction"]
    attention = [layer for layer in record.layers if layer["role"] == "attention"]
    body: dict[str, Any] = {
        "job_id": record.id,
        "state": "done",
        "model": record.model,
        "created": _iso(record.created),
        "expires": _iso(record.expires),
    }
    if record.kind == "series":
        body["dates"] = record.extra.get("dates", [])
        body["days"] = record.extra.get("days", [])
        body["prediction"] = series_prediction(record, store)
        body["attention"] = [
            {**_public(layer, record), "items": series_attention(record, store, layer["name"])}
            for layer in attention
        ]
    else:
        body["georeference"] = record.georef
        if record.extra.get("dates"):
            body["dates"] = record.extra["dates"]
        body["prediction"] = {
            "layers": [_public(layer, record) for layer in prediction],
            "url": f"/jobs/{record.id}/prediction?format=geotiff",
        }
        body["attention"] = [_public(layer, record) for layer in attention]
    body["links"] = links(record)
    return body


def series_prediction(record: JobRecord, store: JobStore) -> dict[str, Any]:
    """Class and probabilities for each series of a series job."""
    layer = next(la for la in record.layers if la["role"] == "prediction")
    probs = np.asarray(store.array(record, layer["name"]))
    classes: list[str] = record.extra["classes"]
    ids: list[str] = record.extra["ids"]
    items = []
    for item_id, row in zip(ids, probs, strict=True):
        best = int(row.argmax())
        items.append(
            {
                "id": item_id,
                "class": classes[best],
                "confidence": float(row[best]),
                "probabilities": dict(zip(classes, row.tolist(), strict=True)),
            }
        )
    return {"name": layer["name"], "kind": layer["kind"], "classes": classes, "items": items}


def series_attention(record: JobRecord, store: JobStore, name: str) -> list[dict[str, Any]]:
    """Per-series attention weights: per head and mean over heads, per date."""
    weights = np.asarray(store.array(record, name))  # (N, heads, T)
    ids: list[str] = record.extra["ids"]
    return [
        {"id": item_id, "weights": w.tolist(), "mean": w.mean(axis=0).tolist()}
        for item_id, w in zip(ids, weights, strict=True)
    ]


def attention_listing(record: JobRecord) -> dict[str, Any]:
    """``GET /attention/{id}``: every attention layer with its URLs."""
    layers = []
    for layer in record.layers:
        if layer["role"] != "attention":
            continue
        entry = _public(layer, record)
        if record.kind == "raster" and len(layer["shape"]) >= 2:
            entry["geotiff_url"] = f"/attention/{record.id}/{layer['name']}?format=geotiff"
        layers.append(entry)
    body: dict[str, Any] = {"job_id": record.id, "model": record.model, "layers": layers}
    if record.extra.get("dates"):
        body["dates"] = record.extra["dates"]
    if record.kind == "raster":
        body["georeference"] = record.georef
        body["geotiff_url"] = f"/attention/{record.id}?format=geotiff"
    return body


def layer_json(record: JobRecord, store: JobStore, name: str) -> dict[str, Any]:
    """One layer's metadata and values as JSON (NaN becomes null)."""
    layer = record.layer(name)
    body = {"job_id": record.id, **_public(layer, record)}
    if record.kind == "series" and layer["role"] == "attention":
        body["items"] = series_attention(record, store, name)
    elif record.kind == "series":
        body.update(series_prediction(record, store))
    else:
        body["values"] = np.asarray(store.array(record, name))
        if record.georef:
            body["georeference"] = record.georef
    return body


def _spatial_bands(
    record: JobRecord, store: JobStore, layer: dict[str, Any], head: int | None
) -> tuple[list[np.ndarray], list[str], list[dict[str, str]]]:
    """A raster layer as 2-D bands with descriptions and per-band tags."""
    array = store.array(record, layer["name"])
    name = layer["name"]
    if array.ndim == 2:
        kind = layer["kind"]
        level = f", level {layer['level']}" if "level" in layer else ""
        return [np.asarray(array, dtype=np.float32)], [f"{name} ({kind}{level})"], [{}]
    if array.ndim == 3:  # (K, H, W) class probabilities
        classes = layer.get("classes") or [str(i) for i in range(array.shape[0])]
        descs = [f"{name}: {c}" for c in classes]
        return [np.asarray(b) for b in array], descs, [{"CLASS": c} for c in classes]
    if array.ndim == 4:  # (heads, T, H, W) temporal attention
        dates = layer.get("dates") or [f"date {i}" for i in range(array.shape[1])]
        if head is None:
            stack = np.asarray(array).mean(axis=0)
            label = "mean over heads"
        else:
            if not 0 <= head < array.shape[0]:
                raise InvalidInput(f"head must be 0 to {array.shape[0] - 1}")
            stack = np.asarray(array[head])
            label = f"head {head}"
        descs = [f"{name} {d} ({label})" for d in dates]
        return list(stack), descs, [{"DATE": d} for d in dates]
    raise NotFound(f"layer {name!r} is not a raster layer")


def geotiff(record: JobRecord, store: JobStore, names: list[str], head: int | None = None) -> bytes:
    """Several raster layers as one georeferenced float32 GeoTIFF."""
    if record.kind != "raster" or record.georef is None:
        raise NotFound("this job has no raster layers; ask for JSON")
    bands: list[np.ndarray] = []
    descriptions: list[str] = []
    tags: list[dict[str, str]] = []
    for name in names:
        layer = record.layer(name)
        if len(layer["shape"]) < 2:
            continue
        if layer["kind"] == "class":
            cls = np.asarray(store.array(record, name)).astype(np.float32)
            cls[cls == layer.get("nodata", 255)] = np.nan
            bands.append(cls)
            descriptions.append(f"{name} (index into {', '.join(layer.get('classes', []))})")
            tags.append({})
            continue
        b, d, t = _spatial_bands(record, store, layer, head)
        bands += b
        descriptions += d
        tags += t
    if not bands:
        raise NotFound("no raster layers to write")
    stack = np.stack(bands).astype(np.float32, copy=False)
    return encode_geotiff(
        stack,
        Georeference.from_json(record.georef),
        descriptions,
        tags={
            "ATTNSERVE_JOB": record.id,
            "ATTNSERVE_MODEL": f"{record.model['name']}:{record.model['version']}",
        },
        band_tags=tags,
    )


def prediction_names(record: JobRecord) -> list[str]:
    """The GeoTIFF prediction bands: prediction layers, then spatial attention."""
    pred = [la["name"] for la in record.layers if la["role"] == "prediction"]
    return pred + spatial_attention_names(record)


def spatial_attention_names(record: JobRecord) -> list[str]:
    """Names of attention layers that are rasters."""
    return [
        la["name"]
        for la in record.layers
        if la["role"] == "attention" and len(la["shape"]) >= 2 and record.kind == "raster"
    ]
