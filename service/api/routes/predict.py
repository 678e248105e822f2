"""``POST /predict``: imagery in, prediction and attention out, stored as a job."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from fastapi import APIRouter, Request
from starlette.datastructures import UploadFile
from starlette.responses import Response

from service.api.deps import Owner, State
from service.api.responses import geotiff_response, result_json, wants_geotiff
from service.errors import InvalidInput, UnsupportedMediaType
from service.jobs.store import JobRecord
from service.pipeline import inputs, views
from service.raster.decode import RasterLimits
from service.runtime.repository import ServedModel

router = APIRouter(tags=["predict"])

JSON_IMAGE_MAX_PIXELS = 512 * 512
MAX_FORM_FILES = 400
MAX_FORM_FIELDS = 32

_MULTIPART_SCHEMA = {
    "type": "object",
    "required": ["model", "image"],
    "properties": {
        "model": {"type": "string", "description": "model name or name:version"},
        "image": {
            "type": "array",
            "items": {"type": "string", "format": "binary"},
            "description": "a GeoTIFF; for temporal models one per date, or one stack",
        },
        "dates": {
            "type": "string",
            "description": "ISO dates, comma-separated or a JSON list (temporal models)",
        },
        "format": {"type": "string", "enum": ["json", "geotiff"]},
    },
}
_JSON_SCHEMA = {
    "type": "object",
    "required": ["model"],
    "properties": {
        "model": {"type": "string"},
        "format": {"type": "string", "enum": ["json", "geotiff"]},
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


def _limits(state: State, max_pixels: int) -> RasterLimits:
    s = state.settings
    return RasterLimits(
        max_pixels=max_pixels,
        max_bands=s.max_bands,
        max_bytes=int(s.max_upload_mb * 2**20 * 16),
    )


def _resolve(state: State, request: Request, ref: str) -> ServedModel:
    served = state.repository.get(ref)
    request.state.model = served.manifest.name
    return served


async def _answer(record: JobRecord, state: State, fmt: str | None, request: Request) -> Response:
    if wants_geotiff(fmt, request.headers.get("accept")):
        if record.kind != "raster":
            raise InvalidInput("format=geotiff needs a raster input; this request gave series")
        data = await asyncio.to_thread(
            views.geotiff, record, state.store, views.prediction_names(record)
        )
        response = geotiff_response(data, f"{record.id}-prediction.tif")
        response.headers["X-Job-Id"] = record.id
        response.headers["Location"] = f"/jobs/{record.id}"
        return response
    return result_json(views.job_json(record, state.store))


async def _from_multipart(request: Request, state: State, owner: str | None) -> Response:
    try:
        form = await request.form(max_files=MAX_FORM_FILES, max_fields=MAX_FORM_FIELDS)
    except Exception as exc:  # python-multipart and starlette raise several kinds
        raise InvalidInput(f"the multipart body could not be parsed: {exc}") from None
    try:
        fields = {k: v for k, v in form.multi_items() if isinstance(v, str)}
        uploads = [v for k, v in form.multi_items() if k == "image" and isinstance(v, UploadFile)]
        unknown = {k for k, _ in form.multi_items()} - {"model", "image", "dates", "format"}
        if unknown:
            raise InvalidInput(f"unknown form fields: {', '.join(sorted(unknown))}")
        if "model" not in fields:
            raise InvalidInput("model: the form needs a model field")
        if not uploads:
            raise InvalidInput("image: the form needs at least one image file part")
        served = _resolve(state, request, fields["model"])
        parts = [await u.read() for u in uploads]
    finally:
        await form.close()
    manifest = served.manifest
    if manifest.task == "segmentation":
        if len(parts) != 1:
            raise InvalidInput(f"model {manifest.name} takes one image, got {len(parts)}")
        limits = _limits(state, state.settings.max_sync_pixels)
        raster = await asyncio.to_thread(inputs.read_image, parts[0], manifest, limits)
        record = await state.runner.raster(served, raster, owner)
    else:
        limits = _limits(state, state.settings.max_sync_series_pixels)
        series = await asyncio.to_thread(
            inputs.read_series_rasters, parts, fields.get("dates"), manifest, limits
        )
        record = await state.runner.series(served, series, owner)
    return await _answer(record, state, fields.get("format"), request)


async def _from_json(request: Request, state: State, owner: str | None) -> Response:
    body = await request.body()
    if len(body) > state.settings.max_json_mb * 2**20:
        raise InvalidInput(f"JSON body over {state.settings.max_json_mb:g} MB; upload a GeoTIFF")
    try:
        payload: Any = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"the body is not valid JSON: {exc.msg}") from None
    req = inputs.validate_json(payload)
    served = _resolve(state, request, req.model)
    manifest = served.manifest
    if manifest.task == "temporal_classification":
        if req.parcels is None:
            raise InvalidInput(f"model {manifest.name} takes parcels (series), not an image")
        series = inputs.series_from_json(req, manifest, state.settings.max_json_items)
        record = await state.runner.series(served, series, owner)
    else:
        if req.image is None:
            raise InvalidInput(f"model {manifest.name} takes an image, not parcels")
        raster = inputs.image_from_json(req, manifest, JSON_IMAGE_MAX_PIXELS)
        record = await state.runner.raster(served, raster, owner)
    return await _answer(record, state, req.format, request)


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
    if ctype == "multipart/form-data":
        return await _from_multipart(request, state, owner)
    if ctype == "application/json":
        return await _from_json(request, state, owner)
    raise UnsupportedMediaType(
        f"Content-Type {ctype or 'none'} is not accepted; send multipart/form-data "
        "(GeoTIFF upload) or application/json"
    )
