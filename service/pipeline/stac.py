"""A job as a STAC Item: where its input lies, when, the model that ran, and its output files."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime
from pathlib import PurePosixPath
from typing import Any

import pystac
from pystac.extensions.projection import ProjectionExtension

from service.jobs.record import JobRecord, Layer
from service.pipeline import views
from service.pipeline.tasks.base import CLASS_NODATA
from service.pipeline.tiles import band_layers, tile_layers
from service.raster.extent import Extent, extent
from service.raster.georef import Georeference
from service.raster.tiles import class_colour
from service.runtime.manifest import Manifest, OutputSpec, TensorSpec

PROJECTION = ProjectionExtension.get_schema_uri()
# The versions of the shipped schemas (see stac_schemas/README.md).
RASTER = "https://stac-extensions.github.io/raster/v2.0.0/schema.json"
CLASSIFICATION = "https://stac-extensions.github.io/classification/v1.1.0/schema.json"
MLM = "https://stac-extensions.github.io/mlm/v1.5.2/schema.json"
# No registered media type for ONNX: the extension's advice is octet-stream with the framework.
ONNX_MEDIA_TYPE = "application/octet-stream; framework=onnx"

COG = f"{pystac.MediaType.GEOTIFF}; profile=cloud-optimized"
# What each task's outputs are, in the ML-model extension's words.
MLM_TASKS = {
    "segmentation": ["semantic-segmentation"],
    "temporal_classification": ["classification"],
}
# Tensor dimensions, by the manifest's names, as the extension names them.
DIMENSIONS = {"batch": "batch", "dates": "time", "height": "height", "width": "width"}
# What a numeric dimension of an output holds, by the output's kind.
KIND_DIMENSION = {
    "probability": "channel",
    "spatial": "channel",
    "class_probabilities": "class",
    "channel": "bands",
    "temporal": "head",
}


def _iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def _class_name(name: str) -> str:
    """A class name as the classification extension allows it (letters, digits, - and _)."""
    return re.sub(r"[^0-9A-Za-z_-]+", "_", name).strip("_") or "class"


def classes(
    names: list[str], nodata: bool = False, colours: list[str] | None = None
) -> list[dict[str, Any]]:
    """``classification:classes``: classes by index (then the nodata value, where asked).

    Colours are the model's ``#rrggbb`` where it names them, else the tiles' palette.
    """
    colours = colours or []
    out: list[dict[str, Any]] = [
        {
            "value": i,
            "name": _class_name(n),
            "title": n,
            "color_hint": colours[i].lstrip("#") if i < len(colours) else class_colour(i),
        }
        for i, n in enumerate(names)
    ]
    if nodata:
        out.append({"value": CLASS_NODATA, "name": "no_class", "nodata": True})
    return out


def _statistics(layer: Layer) -> dict[str, float]:
    stats = layer.statistics or {}
    out = {"minimum": stats.get("min"), "maximum": stats.get("max"), "mean": stats.get("mean")}
    if stats.get("valid_fraction") is not None:
        out["valid_percent"] = 100.0 * float(stats["valid_fraction"] or 0.0)
    return {k: float(v) for k, v in out.items() if v is not None}


def _bands(layers: list[Layer], gsd_m: float | None, stored_uint8: bool) -> list[dict[str, Any]]:
    """The bands of a raster file holding ``layers`` in order (per class or date where 3-D).

    Scene COGs keep class maps as uint8 with a nodata value, and probabilities or
    attention as float32 (NaN: nodata) or uint8 0-255 for 0-1 with a mask; the
    GeoTIFFs of synchronous jobs are float32 throughout, NaN where there is no data.
    """
    out: list[dict[str, Any]] = []
    for tl in band_layers(layers):
        layer = tl.layer
        band: dict[str, Any] = {"name": tl.name, "description": tl.title}
        if layer.kind == "class" and stored_uint8:
            band.update(data_type="uint8", nodata=CLASS_NODATA)
        elif stored_uint8:
            band.update(data_type="uint8", **{"raster:scale": 1 / 255, "raster:offset": 0.0})
        else:
            band.update(data_type="float32", nodata="nan")
        if tl.key is None and layer.statistics:
            band["statistics"] = _statistics(layer)
        band["raster:sampling"] = "area"
        if gsd_m is not None:
            # A chip scene's COGs hold one value per stride x stride input pixels.
            scale = (layer.stride or 1) if layer.storage == "cog" else 1
            band["raster:spatial_resolution"] = gsd_m * scale
        out.append(band)
    return out


def _dims(names: list[int | str], numeric: str) -> tuple[list[int], list[str]]:
    """Shape (-1 where free) and dimension names of a manifest tensor shape."""
    shape = [d if isinstance(d, int) else -1 for d in names]
    dims = []
    for d in names:
        if isinstance(d, int):
            dims.append(numeric)
        else:
            dims.append(DIMENSIONS.get(re.sub(r"_\d+$", "", d), re.sub(r"[^a-z_-]", "", d.lower())))
    return shape, dims


def _data_type(dtype: str) -> str:
    return (
        dtype if dtype in ("uint8", "int32", "int64", "float16", "float32", "float64") else "other"
    )


def _mlm_input(manifest: Manifest, tensor: TensorSpec) -> dict[str, Any]:
    bands = list(manifest.input.bands)
    shape, dims = _dims(tensor.shape, "bands")
    if len(dims) == 4 and dims[2:] == ["bands", "bands"]:
        dims[2:] = ["height", "width"]  # an image of a fixed size (a chip classifier's)
    entry: dict[str, Any] = {
        "name": tensor.name,
        "bands": bands if "bands" in dims else [],
        "input": {"shape": shape, "dim_order": dims, "data_type": _data_type(tensor.dtype)},
    }
    if tensor.description:
        entry["description"] = tensor.description
    return entry


def _mlm_output(manifest: Manifest, spec: OutputSpec) -> dict[str, Any]:
    shape, dims = _dims(spec.shape, KIND_DIMENSION.get(spec.kind, "channel"))
    if spec.kind == "token_grid":
        dims[-1] = "token"  # (B, heads, N): dimension names must differ
    entry: dict[str, Any] = {
        "name": spec.name,
        "tasks": MLM_TASKS.get(manifest.task, ["classification"]),
        "result": {"shape": shape, "dim_order": dims, "data_type": "float32"},
        "bands": list(manifest.input.bands) if "bands" in dims else [],
    }
    if spec.description:
        entry["description"] = spec.description
    if spec.kind == "class_probabilities" and manifest.classes:
        entry["classification:classes"] = classes(
            manifest.classes, colours=list(manifest.class_colors)
        )
    return entry


def mlm_properties(manifest: Manifest) -> dict[str, Any]:
    """The ML-model extension's Item fields: name, architecture, tasks, inputs, outputs."""
    props: dict[str, Any] = {
        "mlm:name": manifest.name,
        "mlm:architecture": str(
            manifest.training.get("architecture") or manifest.description.split(":")[0]
        ),
        "mlm:tasks": MLM_TASKS.get(manifest.task, ["classification"]),
        "mlm:input": [_mlm_input(manifest, t) for t in manifest.tensors],
        "mlm:output": [_mlm_output(manifest, o) for o in manifest.outputs],
    }
    if manifest.training.get("torch"):
        props.update(
            {"mlm:framework": "PyTorch", "mlm:framework_version": manifest.training["torch"]}
        )
    return props


def _datetimes(record: JobRecord) -> tuple[datetime | None, dict[str, str]]:
    """The Item's datetime, or its range: the input's dates where the job has them."""
    dates = sorted(record.series.dates) if record.series else []
    if not dates:
        return datetime.fromtimestamp(record.created, UTC), {}
    days = [datetime.combine(date.fromisoformat(d), datetime.min.time(), UTC) for d in dates]
    if len(days) == 1:
        return days[0], {}
    return None, {"start_datetime": _iso(days[0]), "end_datetime": _iso(days[-1])}


def _assets(
    record: JobRecord, where: Extent | None, base: str, model_bands: list[str], downloads: bool
) -> dict[str, pystac.Asset]:
    """Output files (data), a preview (overview), the job and the model.

    The model's asset lists the input bands it reads (``model_bands``); it is the
    ONNX file where the server hands model files out (``downloads``), else the
    manifest, the only model definition the server offers then.
    """
    job = f"{base}/jobs/{record.id}"
    assets: dict[str, pystac.Asset] = {}
    gsd = where.gsd_m if where else None
    if record.kind == "raster":
        for file in views.output_files(record):
            layers = [la for la in record.layers if la.file == file]
            uint8 = all(la.dtype == "uint8" for la in layers)
            extra: dict[str, Any] = {"bands": _bands(layers, gsd, uint8)}
            if any(la.kind == "class" for la in layers):
                cls = next(la for la in layers if la.kind == "class")
                extra["classification:classes"] = classes(
                    cls.classes or [], uint8, cls.class_colors
                )
            assets[PurePosixPath(file).stem] = pystac.Asset(
                f"{job}/files/{file}",
                f"{', '.join(la.name for la in layers)}",
                media_type=COG,
                roles=["data"],
                extra_fields=extra,
            )
        if not views.output_files(record):
            for key, href, names in (
                ("prediction", f"{job}/prediction?format=geotiff", views.prediction_names(record)),
                (
                    "attention",
                    f"{base}/attention/{record.id}?format=geotiff",
                    views.spatial_attention_names(record),
                ),
            ):
                layers = [record.layer(n) for n in names]
                if not layers:
                    continue
                extra = {"bands": _bands(layers, gsd, stored_uint8=False)}
                if any(la.kind == "class" for la in layers):
                    cls = next(la for la in layers if la.kind == "class")
                    extra["classification:classes"] = classes(
                        cls.classes or [], colours=cls.class_colors
                    )
                assets[key] = pystac.Asset(
                    href,
                    ", ".join(names),
                    media_type=pystac.MediaType.GEOTIFF,
                    roles=["data"],
                    extra_fields=extra,
                )
        maps = tile_layers(record)
        if maps:
            assets["overview"] = pystac.Asset(
                f"{job}/preview/{maps[0].name}.png",
                f"{maps[0].title}, coloured as its tiles",
                media_type=pystac.MediaType.PNG,
                roles=["overview"],
            )
    if views.has_footprints(record):
        assets["footprints"] = pystac.Asset(
            f"{job}/footprints",
            "polygons (buildings, or a class map's regions) with their attention means",
            media_type=pystac.MediaType.GEOJSON,
            roles=["data"],
        )
    assets["job"] = pystac.Asset(
        job, "the job's JSON answer", media_type=pystac.MediaType.JSON, roles=["metadata"]
    )
    ref = f"{record.model['name']}:{record.model['version']}"
    model: dict[str, Any] = {"mlm:artifact_type": "onnx"}
    if model_bands:
        model["bands"] = [{"name": b} for b in model_bands]
    if downloads:
        assets["model"] = pystac.Asset(
            f"{base}/models/{ref}/onnx",
            f"model {ref}: the ONNX file this job ran",
            media_type=ONNX_MEDIA_TYPE,
            roles=["mlm:model", "model", "mlm:compiled"],
            extra_fields=model,
        )
        assets["manifest"] = pystac.Asset(
            f"{base}/models/{ref}",
            f"model {ref}: its manifest (inputs, outputs, classes, training)",
            media_type=pystac.MediaType.JSON,
            roles=["metadata"],
        )
    else:
        # The server keeps its model files to itself: the manifest is all it offers.
        assets["model"] = pystac.Asset(
            f"{base}/models/{ref}",
            f"model {ref}: its manifest; this server does not hand out the ONNX file",
            media_type=pystac.MediaType.JSON,
            roles=["mlm:model", "metadata"],
            extra_fields=model,
        )
    return assets


def stac_item(
    record: JobRecord, manifest: Manifest | None, base: str, downloads: bool = True
) -> dict[str, Any]:
    """A finished job as a STAC 1.1 Item (JSON); ``base`` is the server's URL, no slash.

    ``manifest`` is the model's, where it is still served: without it the Item
    has no ML-model fields. ``downloads``: the server hands out model files, so
    the model's asset is the ONNX file itself.
    """
    where = extent(Georeference.from_json(record.georef)) if record.georef else None
    moment, span = _datetimes(record)
    extensions = [RASTER] if record.kind == "raster" else []
    item = pystac.Item(
        id=record.id,
        geometry=where.geometry if where else None,
        bbox=where.bbox if where else None,
        datetime=moment,
        properties={
            **span,
            "created": _iso(datetime.fromtimestamp(record.created, UTC)),
            "title": f"{record.model['name']} {record.model['version']} on job {record.id}",
            "attnserve:model": dict(record.model),
        },
        stac_extensions=extensions,
    )
    if manifest is not None:
        item.properties.update(mlm_properties(manifest))
        item.properties["bands"] = [{"name": b} for b in manifest.input.bands]
        item.stac_extensions.append(MLM)
    if where is not None:
        proj = ProjectionExtension.ext(item, add_if_missing=True)
        proj.code = where.code
        if where.code is None:
            proj.wkt2 = where.wkt2
        proj.shape = where.shape
        proj.transform = where.transform
        proj.bbox = where.native_bbox
    bands = list(manifest.input.bands) if manifest else []
    made = _assets(record, where, base, bands, downloads and manifest is not None)
    for key, asset in made.items():
        item.add_asset(key, asset)
    fields = [a.extra_fields for a in made.values()] + item.properties.get("mlm:output", [])
    if any("classification:classes" in part for part in fields):
        item.stac_extensions.append(CLASSIFICATION)
    item.set_self_href(f"{base}/jobs/{record.id}/stac")
    body: dict[str, Any] = item.to_dict(include_self_link=True, transform_hrefs=False)
    return body
