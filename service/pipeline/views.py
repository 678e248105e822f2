"""What a stored job looks like to a client: JSON summaries and GeoTIFF bands."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

import numpy as np

from service.errors import Conflict, InvalidInput, NotFound, PayloadTooLarge
from service.jobs.record import JobRecord, Layer, Series
from service.jobs.store import JobStore
from service.jobs.write_behind import read_only
from service.pipeline.layers import ArraySource, LayerReader, pick_head, served_values
from service.pipeline.tasks import TASKS
from service.pipeline.tasks.base import CLASS_NODATA
from service.raster.encode import encode_geotiff
from service.raster.georef import Georeference

# Larger layers are only served as GeoTIFF.
MAX_JSON_PIXELS = 4096 * 4096


def require_done(record: JobRecord) -> None:
    """Refuse result requests on a job that has no results (yet)."""
    if record.state != "done":
        raise Conflict(f"job is {record.state}; results exist once it is done")


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


def has_footprints(record: JobRecord) -> bool:
    """Whether a job has footprints: a raster job of a task whose maps outline objects."""
    task = TASKS.get(record.model.get("task", ""))
    return record.kind == "raster" and task is not None and task.footprints


def layer_grid(record: JobRecord, layer: Layer) -> dict[str, Any] | None:
    """The georeference of a layer's values: the job's, or a chip scene COG's own.

    A COG layer with a ``stride`` (a chip classifier's scene) holds one value per
    ``stride x stride`` input pixels from the input's corner on, at its own size.
    """
    georef = record.georef
    if georef is None or layer.storage != "cog" or not layer.stride:
        return georef
    a, b, c, d, e, f = georef["transform"][:6]
    s = layer.stride
    height, width = layer.shape[-2:]
    return {
        **georef,
        "transform": [a * s, b * s, c, d * s, e * s, f],
        "width": width,
        "height": height,
    }


def common_grid(record: JobRecord, names: list[str]) -> dict[str, Any]:
    """The one grid that the raster layers ``names`` share, for a GeoTIFF of them all."""
    grids: dict[str, dict[str, Any]] = {}
    for name in names:
        layer = record.layer(name)
        grid = layer_grid(record, layer)
        if len(layer.shape) >= 2 and grid is not None:
            grids.setdefault(repr(grid), grid)
    if len(grids) > 1:
        raise InvalidInput(
            f"layers {', '.join(names)} lie on grids of different resolutions; "
            "ask for each one on its own (/attention/{job}/{layer}?format=geotiff)"
        )
    return next(iter(grids.values()), record.georef or {})


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
    if has_footprints(record):
        base["footprints"] = f"/jobs/{record.id}/footprints"
    for file in output_files(record):
        base[f"file:{file}"] = f"/jobs/{record.id}/files/{file}"
    return base


class Fresh:
    """A just-stored job's arrays, answered from memory rather than read back from disk.

    The answer to ``/predict`` is built from the arrays the model has just
    produced, which the store has written; reading them back (an open, a map
    and page faults per layer) costs about as much as the rest of a small
    request's answer.
    """

    def __init__(self, store: ArraySource, record: JobRecord, arrays: Mapping[str, np.ndarray]):
        self.store = store
        self.record_id = record.id
        self.arrays = arrays

    def array(self, record: JobRecord, name: str) -> np.ndarray:
        """The in-memory array when it is this job's, else the store's."""
        record.layer(name)  # the same refusal of unknown layers as the store's
        if record.id == self.record_id and name in self.arrays:
            return read_only(self.arrays[name])
        return self.store.array(record, name)


def _public(layer: Layer, record: JobRecord) -> dict[str, Any]:
    entry = layer.public()
    if layer.role == "attention":
        entry["url"] = f"/attention/{record.id}/{layer.name}"
    names = layer.bands or layer.channels
    if layer.kind == "channel" and names and layer.values is not None:
        entry["weights"] = channel_weights(names, layer.values)
    return entry


def channel_weights(names: list[str], values: Any) -> dict[str, float]:
    """A channel layer's weights by name."""
    return dict(zip(names, np.asarray(values, dtype=np.float64).tolist(), strict=True))


def job_json(record: JobRecord, store: ArraySource) -> dict[str, Any]:
    """A job as the JSON answer of ``/predict`` and ``GET /jobs/{id}``."""
    prediction = [layer for layer in record.layers if layer.role == "prediction"]
    attention = [layer for layer in record.layers if layer.role == "attention"]
    body: dict[str, Any] = {
        "job_id": record.id,
        "state": record.state,
        "model": record.model,
        "created": _iso(record.created),
        "expires": _iso(record.expires),
    }
    if record.params:
        progress = {"done": 0, "total": 0, "fraction": 0.0, **record.progress}
        body["progress"] = progress
        body["eta_s"] = record.eta_s
        body["error"] = record.error
        if record.tiling is not None:
            body["tiling"] = asdict(record.tiling)
    if record.resampling is not None:
        # Whether the model ran on its own ground resolution, and how.
        body["resampling"] = record.resampling.to_json()
    if record.state != "done":
        body["links"] = {"self": f"/jobs/{record.id}"}
        if record.georef:
            body["georeference"] = record.georef
        return body
    if record.kind == "series":
        series = record.series or Series()
        body["dates"] = series.dates
        body["days"] = series.days
        body["prediction"] = series_prediction(record, store)
        body["attention"] = [
            {**_public(layer, record), "items": series_attention(record, store, layer.name)}
            for layer in attention
        ]
    else:
        body["georeference"] = record.georef
        if record.series is not None and record.series.dates:
            body["dates"] = record.series.dates
        body["prediction"] = {
            "layers": [_public(layer, record) for layer in prediction],
            "url": f"/jobs/{record.id}/prediction?format=geotiff",
        }
        body["attention"] = [_public(layer, record) for layer in attention]
    body["links"] = links(record)
    return body


def _series_items(record: JobRecord) -> tuple[list[str], list[str]]:
    """The classes and item ids of a series job."""
    if record.series is None or record.series.ids is None:
        raise NotFound("this job holds no series")
    return record.series.classes, record.series.ids


def series_prediction(record: JobRecord, store: ArraySource) -> dict[str, Any]:
    """Class and probabilities for each series of a series job."""
    layer = next(la for la in record.layers if la.role == "prediction")
    probs = np.asarray(store.array(record, layer.name))
    classes, ids = _series_items(record)
    best = probs.argmax(axis=1).tolist()
    items = [
        {
            "id": item_id,
            "class": classes[b],
            "confidence": row[b],
            "probabilities": dict(zip(classes, row, strict=True)),
        }
        for item_id, b, row in zip(ids, best, probs.tolist(), strict=True)
    ]
    return {"name": layer.name, "kind": layer.kind, "classes": classes, "items": items}


def series_attention(
    record: JobRecord, store: ArraySource, name: str, head: int | None = None
) -> list[dict[str, Any]]:
    """Per-series attention weights per date: per head and their mean, or ``head``'s only.

    Raises:
        InvalidInput: ``head`` is not one of the layer's heads.
    """
    weights = np.asarray(store.array(record, name))  # (N, heads, T)
    _, ids = _series_items(record)
    if head is not None:
        heads = weights.shape[1]
        if not 0 <= head < heads:
            raise InvalidInput(
                f"head {head} is out of range: layer {name!r} has {heads} heads, 0 to {heads - 1}",
                layer=name,
                heads=heads,
            )
        return [
            {"id": item_id, "weights": w}
            for item_id, w in zip(ids, weights[:, head].tolist(), strict=True)
        ]
    means = weights.mean(axis=1).tolist()
    return [
        {"id": item_id, "weights": w, "mean": m}
        for item_id, w, m in zip(ids, weights.tolist(), means, strict=True)
    ]


def attention_listing(record: JobRecord) -> dict[str, Any]:
    """``GET /attention/{id}``: every attention layer with its URLs."""
    layers = []
    for layer in record.layers:
        if layer.role != "attention":
            continue
        entry = _public(layer, record)
        if record.kind == "raster" and len(layer.shape) >= 2:
            entry["geotiff_url"] = f"/attention/{record.id}/{layer.name}?format=geotiff"
        layers.append(entry)
    body: dict[str, Any] = {"job_id": record.id, "model": record.model, "layers": layers}
    if record.series is not None and record.series.dates:
        body["dates"] = record.series.dates
    if record.kind == "raster":
        body["georeference"] = record.georef
        body["geotiff_url"] = f"/attention/{record.id}?format=geotiff"
    return body


def layer_json(
    record: JobRecord, store: JobStore, name: str, head: int | None = None
) -> dict[str, Any]:
    """One layer's metadata and values as JSON (NaN becomes null).

    A multi-head layer gives the mean over its heads, or ``head``'s values; the
    answer's ``head`` says which. A channel layer's ``weights`` name each value.
    """
    layer = record.layer(name)
    body = {"job_id": record.id, **_public(layer, record)}
    if head is not None and not layer.heads and layer.kind != "temporal":
        pick_head(layer, np.empty(0), head)  # refuses: the layer has one head
    if record.kind == "series" and layer.role == "attention":
        body["items"] = series_attention(record, store, name, head)
        if head is not None:
            body["head"] = head
    elif record.kind == "series":
        body.update(series_prediction(record, store))
    elif layer.storage == "inline":
        body["values"] = layer.values
    elif layer.storage == "cog":
        pixels = int(np.prod(layer.shape))
        if pixels > MAX_JSON_PIXELS:
            raise PayloadTooLarge(
                f"layer {name!r} has {pixels} values, too many for JSON; ask for format=geotiff"
            )
        with LayerReader(record, store) as reader:
            h, w = layer.shape[-2:]
            if len(layer.shape) == 2:
                body["values"] = reader.read(name, slice(0, h), slice(0, w))
            else:
                body["values"] = np.stack(
                    [
                        reader.read(name, slice(0, h), slice(0, w), band=b)
                        for b in range(layer.shape[0])
                    ]
                )
        body["georeference"] = layer_grid(record, layer)
    else:
        values, which = pick_head(layer, served_values(record, store, name), head)
        body["values"] = np.asarray(values)
        if which is not None:
            body["head"] = which
        if record.georef:
            body["georeference"] = record.georef
    names = layer.bands or layer.channels
    if layer.kind == "channel" and names:
        body["weights"] = channel_weights(names, body["values"])
    return body


def require_raster(layer: Layer) -> None:
    """Refuse a GeoTIFF of a layer with no spatial extent: channel weights are served as JSON."""
    if layer.kind == "channel":
        raise InvalidInput(
            f"layer {layer.name!r} is channel attention: one weight per channel, the same "
            "everywhere, with no spatial extent to map; ask for it as JSON (format=json)",
            layer=layer.name,
        )


def _spatial_bands(
    record: JobRecord, store: JobStore, layer: Layer, head: int | None
) -> tuple[list[np.ndarray], list[str], list[dict[str, str]]]:
    """A raster layer as 2-D bands with descriptions and per-band tags."""
    array = served_values(record, store, layer.name)
    name = layer.name
    if layer.heads:
        values, which = pick_head(layer, array, head)
        label = f"mean over {layer.heads} heads" if which == "mean" else f"head {which}"
        desc = f"{name} ({layer.kind}, {label})"
        return [np.asarray(values, dtype=np.float32)], [desc], [{"HEAD": str(which)}]
    if array.ndim == 2:
        kind = layer.kind
        level = f", level {layer.level}" if layer.level is not None else ""
        return [np.asarray(array, dtype=np.float32)], [f"{name} ({kind}{level})"], [{}]
    if array.ndim == 3:  # (K, H, W) class probabilities
        classes = layer.classes or [str(i) for i in range(array.shape[0])]
        descs = [f"{name}: {c}" for c in classes]
        return [np.asarray(b) for b in array], descs, [{"CLASS": c} for c in classes]
    if array.ndim == 4:  # (heads, T, H, W) temporal attention
        dates = layer.dates or [f"date {i}" for i in range(array.shape[1])]
        if head is None:
            stack = np.asarray(array).mean(axis=0)
            label = "mean over heads"
        else:
            if not 0 <= head < array.shape[0]:
                raise InvalidInput(
                    f"head {head} is out of range: layer {name!r} has {array.shape[0]} heads, "
                    f"0 to {array.shape[0] - 1}",
                    layer=name,
                )
            stack = np.asarray(array[head])
            label = f"head {head}"
        descs = [f"{name} {d} ({label})" for d in dates]
        return list(stack), descs, [{"DATE": d} for d in dates]
    raise NotFound(f"layer {name!r} is not a raster layer")


def geotiff(record: JobRecord, store: JobStore, names: list[str], head: int | None = None) -> bytes:
    """Several raster layers as one georeferenced float32 GeoTIFF."""
    if record.kind != "raster" or record.georef is None:
        raise NotFound("this job has no raster layers; ask for JSON")
    layers = [record.layer(name) for name in names]
    if head is not None and not any(la.heads or len(la.shape) == 4 for la in layers):
        raise InvalidInput(
            f"head {head}: {', '.join(names)} has a single head; leave head out", head=head
        )
    # Refused before anything is read: one GeoTIFF has one grid.
    grid = common_grid(record, names)
    bands: list[np.ndarray] = []
    descriptions: list[str] = []
    tags: list[dict[str, str]] = []
    with LayerReader(record, store) as reader:
        for name in names:
            layer = record.layer(name)
            if len(layer.shape) < 2:
                continue
            if layer.storage == "cog":
                h, w = layer.shape[-2:]
                count = layer.shape[0] if len(layer.shape) == 3 else None
                for i in range(count or 1):
                    bands.append(
                        reader.read(name, slice(0, h), slice(0, w), band=i if count else None)
                    )
                    descriptions.append(name if count is None else f"{name} {i}")
                    tags.append({})
                continue
            if layer.kind == "class":
                cls = np.asarray(store.array(record, name)).astype(np.float32)
                cls[cls == (CLASS_NODATA if layer.nodata is None else layer.nodata)] = np.nan
                bands.append(cls)
                descriptions.append(f"{name} (index into {', '.join(layer.classes or [])})")
                tags.append({})
                continue
            more_bands, more_desc, more_tags = _spatial_bands(record, store, layer, head)
            bands += more_bands
            descriptions += more_desc
            tags += more_tags
    if not bands:
        raise NotFound("no raster layers to write")
    stack = np.stack(bands).astype(np.float32, copy=False)
    return encode_geotiff(
        stack,
        Georeference.from_json(grid),
        descriptions,
        tags={
            "ATTNSERVE_JOB": record.id,
            "ATTNSERVE_MODEL": f"{record.model['name']}:{record.model['version']}",
        },
        band_tags=tags,
    )


def prediction_names(record: JobRecord) -> list[str]:
    """The GeoTIFF prediction bands: prediction layers, then spatial attention.

    Scene jobs keep prediction and attention in separate COGs; their prediction
    GeoTIFF is the first prediction COG (probabilities, or the class map).
    """
    pred = [la.name for la in record.layers if la.role == "prediction"]
    if any(la.storage == "cog" for la in record.layers):
        return pred[:1]
    return pred + spatial_attention_names(record)


def spatial_attention_names(record: JobRecord) -> list[str]:
    """Names of attention layers that are rasters."""
    return [
        la.name
        for la in record.layers
        if la.role == "attention" and len(la.shape) >= 2 and record.kind == "raster"
    ]


def stored_file(record: JobRecord, names: list[str]) -> str | None:
    """The stored COG holding exactly these layers, in order, if there is one."""
    files = {layer.file for layer in record.layers if layer.name in names}
    if len(files) != 1 or None in files:
        return None
    file = files.pop()
    in_file = [la.name for la in record.layers if la.file == file]
    return str(file) if in_file == names else None


def output_files(record: JobRecord) -> list[str]:
    """Names of the stored output COGs of a scene job."""
    return sorted({str(la.file) for la in record.layers if la.storage == "cog"})
