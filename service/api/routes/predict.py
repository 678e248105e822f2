"""``POST /predict``: imagery in, prediction and attention out, stored as a job."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path
from typing import Any

import orjson
from fastapi import APIRouter, Request
from starlette.datastructures import UploadFile
from starlette.requests import ClientDisconnect
from starlette.responses import Response

from service.api.deps import Owner, State
from service.api.errors import error_response
from service.api.responses import geotiff_response, result_json, wants_geotiff
from service.errors import InvalidInput, PayloadTooLarge, UnsupportedMediaType
from service.memory import MemoryBudget, Reservation
from service.pipeline import inputs, views
from service.pipeline.runner import Stored
from service.pipeline.scene import SceneOptions, check_scene
from service.raster.decode import RasterInfo, RasterLimits, check_limits, describe, open_geotiff
from service.raster.resample import check_grid, plan_resampling
from service.runtime.manifest import Manifest
from service.runtime.repository import ServedModel

log = logging.getLogger(__name__)
router = APIRouter(tags=["predict"])

# The status nginx logs for a client that closed its connection before the
# answer: the request was not served, and no one is there to tell.
CLIENT_CLOSED = 499

JSON_IMAGE_MAX_PIXELS = 512 * 512
MAX_FORM_FILES = 400
MAX_FORM_FIELDS = 32
FORM_FIELDS = frozenset(
    {"model", "image", "dates", "format", "async", "tile_size", "overlap", "uint8", "compress"}
)

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
        "async": {
            "type": "boolean",
            "description": "run as a job (202); images over the synchronous limit always are",
        },
        "tile_size": {"type": "integer", "minimum": 64, "maximum": 4096},
        "overlap": {"type": "integer", "minimum": 0, "maximum": 2048},
        "uint8": {"type": "boolean", "description": "store scene outputs as uint8 (0-255 = 0-1)"},
        "compress": {"type": "string", "enum": ["deflate", "zstd"]},
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


async def _answer(stored: Stored, state: State, fmt: str | None, request: Request) -> Response:
    record = stored.record
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
    return result_json(views.job_json(record, views.Fresh(state.store, record, stored.arrays)))


async def _from_multipart(request: Request, state: State, owner: str | None) -> Response:
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
        repeated = sorted({k for k in names if k != "image" and names.count(k) > 1})
        if repeated:
            raise InvalidInput(f"form fields given more than once: {', '.join(repeated)}")
        if any(isinstance(v, UploadFile) for k, v in form.multi_items() if k != "image"):
            raise InvalidInput("only image parts may be files; other fields are text")
        if "model" not in fields:
            raise InvalidInput("model: the form needs a model field")
        if not uploads:
            raise InvalidInput("image: the form needs at least one image file part")
        served = _resolve(state, request, fields["model"])
        parts = [await u.read() for u in uploads]
    finally:
        await form.close()
    manifest = served.manifest
    want_async = _flag(fields.get("async") or request.query_params.get("async"), "async")
    if manifest.task == "segmentation" and len(parts) != 1:
        raise InvalidInput(f"model {manifest.name} takes one image, got {len(parts)}")
    sync_limit = (
        state.settings.max_sync_pixels
        if manifest.task == "segmentation"
        else state.settings.max_sync_series_pixels
    )
    scene_limits = RasterLimits(
        max_pixels=state.settings.max_scene_pixels,
        max_bands=state.settings.max_bands,
        max_bytes=2**62,  # scenes are read window by window, never decoded whole
    )
    limits = _limits(state, sync_limit)
    if manifest.task == "segmentation":
        # One open decides between a scene job and a synchronous answer, and reads.
        image = await asyncio.to_thread(
            _image_if_sync,
            parts[0],
            scene_limits,
            None if want_async else limits,
            manifest,
            (state.settings.resample_tolerance, state.settings.resample_max_factor),
            served,
            state.budget,
        )
        if image is None:
            return await _submit_scene(request, state, owner, served, parts, fields, scene_limits)
        raster, held = image
        try:
            stored = await state.runner.raster(served, raster, owner)
            del raster, image
            return await _answer(stored, state, fields.get("format"), request)
        finally:
            await held.release_async()
    dated = await asyncio.to_thread(
        _series_if_sync,
        parts,
        fields.get("dates"),
        scene_limits,
        None if want_async else limits,
        served,
        state.budget,
        state.settings.max_dates,
    )
    if dated is None:
        # Every part's header, before anything is stored for the job.
        await asyncio.to_thread(_headers, parts, scene_limits)
        return await _submit_scene(request, state, owner, served, parts, fields, scene_limits)
    series, held = dated
    try:
        stored = await state.runner.series(served, series, owner)
        del series, dated
        return await _answer(stored, state, fields.get("format"), request)
    finally:
        await held.release_async()


def _image_if_sync(
    data: bytes,
    scene_limits: RasterLimits,
    sync: RasterLimits | None,
    manifest: Manifest,
    tolerance: tuple[float, float],
    served: ServedModel,
    budget: MemoryBudget,
) -> tuple[inputs.RasterInput, Reservation] | None:
    """The decoded image and the memory it holds, or None when it must run as a scene job.

    ``sync``: the synchronous limits, None when the client asked for a job.
    An image is synchronous when it fits the limits both as sent and on the
    model's grid (``tolerance``: ``Settings.resample_tolerance`` and
    ``resample_max_factor``), and
    when its estimated memory fits one request's share of ``budget``; its
    memory is reserved before any pixel is decoded.
    """
    with open_geotiff(data) as dataset:
        info = describe(dataset)
        check_limits(info, scene_limits)
        plan = plan_resampling(info.georef, manifest.input.gsd_m, *tolerance)
        check_grid(plan, scene_limits)
        pixels = max(info.width * info.height, plan.model_pixels)
        if sync is None or pixels > sync.max_pixels:
            return None
        need = inputs.image_bytes(served, pixels, info.count, _itemsize(info))
        if not budget.fits(need):
            return None  # tiled as a scene job: its memory is bounded by the tile
        held = budget.reserve(need, f"a {info.width}x{info.height} image")
        try:
            raster = inputs.read_open_image(dataset, info, manifest, sync)
        except BaseException:
            held.release()
            raise
        raster.resampling = plan
        return raster, held


def _itemsize(info: RasterInfo) -> int:
    return max(1, info.decoded_bytes // max(1, info.width * info.height * info.count))


def _series_if_sync(
    parts: list[bytes],
    dates_text: str | None,
    scene_limits: RasterLimits,
    sync: RasterLimits | None,
    served: ServedModel,
    budget: MemoryBudget,
    max_dates: int,
) -> tuple[inputs.SeriesInput, Reservation] | None:
    """The dated images as series and the memory they hold, or None for a scene job.

    Each part is opened once, and every part's header (size, bands, so the
    date count) is checked before any part is decoded; their memory is then
    reserved. ``sync``: the synchronous limits, None when the client asked
    for a job.
    """
    manifest = served.manifest
    dates = inputs.parse_dates(dates_text) if dates_text else []
    with contextlib.ExitStack() as stack:
        opened = []
        for data in parts:
            dataset = stack.enter_context(open_geotiff(data))
            info = describe(dataset)
            check_limits(info, scene_limits)
            opened.append((dataset, info))
        infos = [info for _, info in opened]
        first = infos[0]
        if sync is None or first.width * first.height > sync.max_pixels:
            return None
        t = inputs.date_count(infos, manifest, len(dates), max_dates)
        pixels = first.width * first.height
        need = inputs.stack_bytes(served, pixels, t, max(_itemsize(i) for i in infos))
        if not budget.fits(need):
            return None  # tiled as a scene job: its memory is bounded by the tile
        held = budget.reserve(need, f"{t} dated images of {first.width}x{first.height}")
        try:
            rasters = [inputs.read_open_dated(ds, info, manifest, sync) for ds, info in opened]
            return inputs.series_from_rasters(rasters, dates, manifest), held
        except BaseException:
            held.release()
            raise


def client_closed(request: Request) -> Response:
    """The answer to a client that hung up before its body was read: logged, never a 500."""
    log.info("client closed the connection during %s %s", request.method, request.url.path)
    return error_response(
        CLIENT_CLOSED, "client_closed_request", "the client closed the connection"
    )


def _flag(value: str | None, name: str) -> bool:
    if value is None:
        return False
    text = value.strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    raise InvalidInput(f"{name} must be true or false, not {value!r}")


def _int_field(fields: dict[str, str], name: str, low: int, high: int) -> int | None:
    if name not in fields:
        return None
    try:
        value = int(fields[name])
    except ValueError:
        raise InvalidInput(f"{name} must be an integer") from None
    if not low <= value <= high:
        raise InvalidInput(f"{name} must be between {low} and {high}")
    return value


def _headers(parts: list[bytes], limits: RasterLimits) -> list[RasterInfo]:
    infos = []
    for data in parts:
        with open_geotiff(data) as dataset:
            info = describe(dataset)
        check_limits(info, limits)
        infos.append(info)
    return infos


async def _submit_scene(
    request: Request,
    state: State,
    owner: str | None,
    served: ServedModel,
    parts: list[bytes],
    fields: dict[str, str],
    limits: RasterLimits,
) -> Response:
    manifest = served.manifest
    dates: list[str] = []
    if manifest.task == "temporal_classification":
        raw = fields.get("dates")
        if raw:
            dates = [d.isoformat() for d in inputs.parse_dates(raw)]
        else:
            with open_geotiff(parts[0]) as dataset:
                tagged = describe(dataset).dates
            dates = tagged[:: len(manifest.input.bands)] if len(parts) == 1 else []
            if not dates:
                raise InvalidInput("dates are missing: give a dates field (one ISO date per date)")
    options = SceneOptions(
        tile_size=_int_field(fields, "tile_size", 64, 4096),
        overlap=_int_field(fields, "overlap", 0, 2048),
        uint8=_flag(fields.get("uint8"), "uint8"),
        compress=fields.get("compress", "deflate"),
        dates=dates,
    )
    if options.compress not in ("deflate", "zstd"):
        raise InvalidInput("compress must be deflate or zstd")
    if options.tile_size and options.overlap and 2 * options.overlap > options.tile_size:
        raise InvalidInput("overlap may be at most half of tile_size")
    options.tile_size = _scene_tile(served, state, options.tile_size, max(1, len(dates)))
    model = {"name": manifest.name, "version": manifest.version, "task": manifest.task}
    record = state.store.new_record(model, "raster", owner)
    record.state = "queued"
    names = [f"input_{i}.tif" for i in range(len(parts))]
    record.params = {"model": manifest.ref, "inputs": names, "options": options.to_json()}
    record.progress = {"done": 0, "total": 0, "fraction": 0.0}

    def check(paths: list[Path]) -> None:
        infos = check_scene(paths, manifest, limits, dates)
        record.georef = infos[0].georef.to_json()
        if manifest.task == "segmentation":
            plan = plan_resampling(
                infos[0].georef,
                manifest.input.gsd_m,
                state.settings.resample_tolerance,
                state.settings.resample_max_factor,
            )
            check_grid(plan, limits)
            record.extra["resampling"] = plan.to_json()  # the scene runner follows it

    await asyncio.to_thread(
        state.store.save, record, {}, dict(zip(names, parts, strict=True)), check
    )
    try:
        state.jobs.submit(record)
    except Exception:
        state.store.delete(record.id)
        raise
    body = views.job_json(record, state.store)
    body["status_url"] = f"/jobs/{record.id}"
    response = result_json(body, status_code=202)
    response.headers["Location"] = f"/jobs/{record.id}"
    return response


def _scene_tile(served: ServedModel, state: State, asked: int | None, dates: int) -> int | None:
    """The tile size a scene job runs with, within one request's memory budget.

    A tile size the client asked for that does not fit is refused (413, naming
    the largest that does); the model's default tile shrinks to fit instead.
    Returns None to keep the model's default.
    """
    manifest = served.manifest
    budget = state.budget
    if manifest.task == "segmentation":
        default = manifest.input.tile_size or 512
        multiple = manifest.input.size_multiple or 1
    else:
        default, multiple = 256, 16
    tile = asked or default

    def need(side: int) -> int:
        return inputs.scene_bytes(served, side, dates, state.settings.scene_tiles_in_flight)

    if budget.fits(need(tile)):
        return asked
    fits = tile // multiple * multiple
    while fits > multiple and not budget.fits(need(fits)):
        fits -= multiple
    if asked is not None or not budget.fits(need(fits)):
        raise PayloadTooLarge(
            f"tile_size {tile} needs about {need(tile) // 2**20} MiB of memory; the limit per "
            f"job is {budget.per_request // 2**20} MiB (ATTNSERVE_REQUEST_MEMORY_MB): use a "
            f"tile_size of at most {fits}",
            max_tile_size=fits,
        )
    return fits


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
    budget = state.budget
    if manifest.task == "temporal_classification":
        if req.parcels is None:
            raise InvalidInput(f"model {manifest.name} takes parcels (series), not an image")
        series = inputs.series_from_json(
            req, manifest, state.settings.max_json_items, state.settings.max_dates
        )
        rows, t = series.series.shape[:2]
        need = inputs.stack_bytes(served, rows, t, 4)
        held = await asyncio.to_thread(budget.reserve, need, f"{rows} series of {t} dates")
        try:
            stored = await state.runner.series(served, series, owner)
        finally:
            await held.release_async()
    else:
        if req.image is None:
            raise InvalidInput(f"model {manifest.name} takes an image, not parcels")
        raster = inputs.image_from_json(req, manifest, JSON_IMAGE_MAX_PIXELS)
        bands, h, w = raster.data.shape
        need = inputs.image_bytes(served, h * w, bands, 4)
        held = await asyncio.to_thread(budget.reserve, need, f"a {w}x{h} image")
        try:
            stored = await state.runner.raster(served, raster, owner)
        finally:
            await held.release_async()
    return await _answer(stored, state, req.format, request)


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
        if ctype == "multipart/form-data":
            return await _from_multipart(request, state, owner)
        if ctype == "application/json":
            return await _from_json(request, state, owner)
    except ClientDisconnect:
        return client_closed(request)
    raise UnsupportedMediaType(
        f"Content-Type {ctype or 'none'} is not accepted; send multipart/form-data "
        "(GeoTIFF upload) or application/json"
    )
