"""``POST /predict``: imagery in, prediction and attention out, stored as a job."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
from fastapi import APIRouter, Request
from starlette.datastructures import UploadFile
from starlette.requests import ClientDisconnect
from starlette.responses import Response

from service.api.deps import Owner, State, resolve_model
from service.api.errors import client_closed
from service.api.responses import geotiff_response, result_json, wants_geotiff
from service.errors import InvalidInput, UnsupportedMediaType
from service.pipeline.inputs import validate_json
from service.pipeline.intake import SceneRequest, SyncRequest, UploadOptions
from service.pipeline.runner import Stored
from service.pipeline.spool import UploadSpool
from service.pipeline.stac_inputs import ReferenceQuery

router = APIRouter(tags=["predict"])

MAX_FORM_FILES = 400
MAX_FORM_FIELDS = 32
FORM_FIELDS = frozenset(
    {
        "model",
        "image",
        "dates",
        "format",
        "async",
        "tile_size",
        "overlap",
        "uint8",
        "compress",
        "min_confidence",
        "chip_stride",
        "gsd_m",
        "href",
        "stac",
        "assets",
    }
)

_MULTIPART_SCHEMA = {
    "type": "object",
    "required": ["model"],
    "properties": {
        "model": {"type": "string", "description": "model name or name:version"},
        "image": {
            "type": "array",
            "items": {"type": "string", "format": "binary"},
            "description": "a GeoTIFF; for temporal models one per date, or one stack",
        },
        "href": {
            "type": "array",
            "items": {"type": "string"},
            "description": "instead of image: https:// or s3:// URLs of GeoTIFFs (one per date)",
        },
        "stac": {"type": "string", "description": "a STAC Item or ItemCollection: URL or JSON"},
        "assets": {"type": "string", "description": "asset keys to read: visual, red,green,blue"},
        "dates": {
            "type": "string",
            "description": "ISO dates, comma-separated or a JSON list (temporal models)",
        },
        "format": {"type": "string", "enum": ["json", "geotiff"]},
        "async": {
            "type": "boolean",
            "description": "run as a job (202); images over the synchronous limit always are",
        },
        "tile_size": {"type": "integer", "minimum": 64, "maximum": 4096},
        "overlap": {"type": "integer", "minimum": 0, "maximum": 2048},
        "uint8": {"type": "boolean", "description": "store scene outputs as uint8 (0-255 = 0-1)"},
        "compress": {"type": "string", "enum": ["deflate", "zstd"]},
        "min_confidence": {
            "type": "number",
            "minimum": 0,
            "maximum": 1,
            "description": "class maps: no class where the top probability is below it",
        },
        "chip_stride": {
            "type": "integer",
            "minimum": 1,
            "description": "chip classifier scenes: pixels between chips (default: the chip)",
        },
        "gsd_m": {
            "type": "number",
            "exclusiveMinimum": 0,
            "description": "metres per pixel of an image without a usable georeference (no "
            "CRS): it is then resampled to the model's ground resolution as a georeferenced "
            "one would be; ignored where the image has a georeference",
        },
    },
}
_JSON_SCHEMA = {
    "type": "object",
    "required": ["model"],
    "properties": {
        "model": {"type": "string"},
        "format": {"type": "string", "enum": ["json", "geotiff"]},
        "min_confidence": {"type": "number", "minimum": 0, "maximum": 1},
        "href": {"type": ["string", "array"], "items": {"type": "string"}},
        "stac": {"type": ["string", "object"]},
        "assets": {"type": ["string", "array"], "items": {"type": "string"}},
        "dates": {"type": "array", "items": {"type": "string", "format": "date"}},
        "days": {"type": "array", "items": {"type": "number"}},
        "parcels": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["series"],
                "properties": {
                    "id": {"type": "string"},
                    "series": {
                        "type": "array",
                        "items": {"type": "array", "items": {"type": "number"}},
                    },
                    "valid": {"type": "array", "items": {"type": "boolean"}},
                },
            },
        },
        "image": {
            "type": "array",
            "items": {"type": "array", "items": {"type": "array", "items": {"type": "number"}}},
        },
    },
}


async def _read_form(
    request: Request, spool: UploadSpool
) -> tuple[str, list[bytes | Path], ReferenceQuery | None, UploadOptions]:
    """The model reference, image parts (or references) and options of a multipart upload.

    Images past a few megabytes are copied to files of ``spool``, not read into memory.
    """
    try:
        form = await request.form(max_files=MAX_FORM_FILES, max_fields=MAX_FORM_FIELDS)
    except ClientDisconnect:
        raise
    except Exception as exc:  # python-multipart and starlette raise several kinds
        raise InvalidInput(f"the multipart body could not be parsed: {exc}") from None
    try:
        fields = {k: v for k, v in form.multi_items() if isinstance(v, str)}
        uploads = [v for k, v in form.multi_items() if k == "image" and isinstance(v, UploadFile)]
        names = [k for k, _ in form.multi_items()]
        unknown = set(names) - FORM_FIELDS
        if unknown:
            raise InvalidInput(f"unknown form fields: {', '.join(sorted(unknown))}")
        repeated = sorted({k for k in names if k not in ("image", "href") and names.count(k) > 1})
        if repeated:
            raise InvalidInput(f"form fields given more than once: {', '.join(repeated)}")
        if any(isinstance(v, UploadFile) for k, v in form.multi_items() if k != "image"):
            raise InvalidInput("only image parts may be files; other fields are text")
        if "model" not in fields:
            raise InvalidInput("model: the form needs a model field")
        hrefs = [v for k, v in form.multi_items() if k == "href" and isinstance(v, str)]
        query = ReferenceQuery.from_fields(hrefs, fields)
        if query is not None and uploads:
            raise InvalidInput("give image parts or references (href, stac), not both")
        if not uploads and query is None:
            raise InvalidInput("image: the form needs at least one image file part (or an href)")
        parts: list[bytes | Path] = [await spool.take(u.file, u.size) for u in uploads]
    finally:
        await form.close()
    return (
        fields["model"],
        parts,
        query,
        UploadOptions.from_fields(fields, request.query_params.get("async")),
    )


async def _answer(stored: Stored, state: State, fmt: str | None, request: Request) -> Response:
    record = stored.record
    if wants_geotiff(fmt, request.headers.get("accept")):
        if record.kind != "raster":
            raise InvalidInput("format=geotiff needs a raster input; this request gave series")
        data = await state.jobs.prediction_geotiff(record)
        response = geotiff_response(data, f"{record.id}-prediction.tif")
        response.headers["X-Job-Id"] = record.id
        response.headers["Location"] = f"/jobs/{record.id}"
        return response
    return result_json(state.jobs.result(stored))


async def _respond(
    request: Request,
    state: State,
    owner: str | None,
    accepted: SyncRequest | SceneRequest,
    fmt: str | None,
) -> Response:
    """Run a synchronous request and answer its result, or answer a scene job accepted (202).

    ``accepted`` is passed straight from the intake, so that the decoded input
    is dropped once it has run, while the answer is made.
    """
    if isinstance(accepted, SceneRequest):
        record = await state.jobs.submit(accepted, owner)
        body = state.jobs.status(record)
        body["status_url"] = f"/jobs/{record.id}"
        response = result_json(body, status_code=202)
        response.headers["Location"] = f"/jobs/{record.id}"
        return response
    held = accepted.held
    try:
        stored = await state.jobs.run(accepted, owner)
        del accepted
        return await _answer(stored, state, fmt, request)
    finally:
        await held.release_async()


async def _from_multipart(request: Request, state: State, owner: str | None) -> Response:
    # The spooled files go when the request is answered: a scene job's store keeps
    # a link (or a copy) of its own.
    with UploadSpool(state.store.upload_dir) as spool:
        ref, parts, query, options = await _read_form(request, spool)
        served = resolve_model(state, request, ref)
        if query is not None:
            accepted = await state.intake.references(served, query, options)
        else:
            accepted = await state.intake.upload(served, parts, options)
        return await _respond(request, state, owner, accepted, options.format)


async def _from_json(request: Request, state: State, owner: str | None) -> Response:
    body = await request.body()
    if len(body) > state.settings.max_json_mb * 2**20:
        raise InvalidInput(f"JSON body over {state.settings.max_json_mb:g} MB; upload a GeoTIFF")
    try:
        payload: Any = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"the body is not valid JSON: {exc.msg}") from None
    if isinstance(payload, dict) and ("href" in payload or "stac" in payload):
        query, fields = ReferenceQuery.from_json(payload)
        options = UploadOptions.from_fields(fields, request.query_params.get("async"))
        if query is None or "model" not in fields:
            raise InvalidInput("model: a reference request needs a model")
        served = resolve_model(state, request, fields["model"])
        accepted = await state.intake.references(served, query, options)
        return await _respond(request, state, owner, accepted, options.format)
    req = validate_json(payload)
    served = resolve_model(state, request, req.model)
    return await _respond(request, state, owner, await state.intake.json(served, req), req.format)


@router.post(
    "/predict",
    summary="Predict, with the attention behind the prediction",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {"schema": _MULTIPART_SCHEMA},
                "application/json": {"schema": _JSON_SCHEMA},
            },
        }
    },
)
async def predict(request: Request, state: State, owner: Owner) -> Response:
    """Run a model on a GeoTIFF (multipart) or small arrays (JSON); the result is a job.

    The default answer is JSON: job id, model, prediction summary (or classes and
    probabilities for series), each attention layer, the georeference and links.
    ``format=geotiff`` (or ``Accept: image/tiff``) answers a GeoTIFF with the
    input's CRS and transform, prediction and attention bands.
    """
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    try:
        # A form without files (-d model=... -d href=...) is urlencoded; both read the same.
        if ctype in ("multipart/form-data", "application/x-www-form-urlencoded"):
            return await _from_multipart(request, state, owner)
        if ctype == "application/json":
            return await _from_json(request, state, owner)
    except ClientDisconnect:
        return client_closed(request)
    raise UnsupportedMediaType(
        f"Content-Type {ctype or 'none'} is not accepted; send multipart/form-data "
        "(GeoTIFF upload) or application/json"
    )
