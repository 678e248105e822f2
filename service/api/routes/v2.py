"""The Open Inference Protocol (KServe v2) over REST, with the binary tensor extension.

Standard clients (``tritonclient[http]``, KServe's ``InferenceRESTClient``) can
list, describe and run the served models. Requests go through each model's
dynamic batcher, like ``/predict``, so they share batches and metrics with it;
the model's attention outputs are plain output tensors here.

Errors on ``/v2`` paths take the protocol's shape, ``{"error": "<message>"}``,
with the server's ``code`` and ``status`` beside it: KServe clients read
``error`` as a string (tritonclient formats it into its exception message), so
the object ``{"error": {...}}`` used elsewhere would break them.
:class:`OipErrorShape` rewrites every error answered under ``/v2``, including
those of middleware (401, 413) and unknown paths.
"""

from __future__ import annotations

import asyncio
import math
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
from fastapi import APIRouter, Request
from pydantic import BaseModel, Field
from starlette.requests import ClientDisconnect
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service import __version__
from service.api.deps import State
from service.api.responses import JSONBody
from service.api.routes.health import readiness
from service.api.routes.predict import client_closed
from service.config import Settings
from service.errors import (
    InvalidInput,
    NotReady,
    PayloadTooLarge,
    UnsupportedMediaType,
    UnsupportedRaster,
)
from service.pipeline.inputs import FLOAT32_MAX, image_bytes, stack_bytes
from service.runtime.manifest import Manifest
from service.runtime.repository import ServedModel

PREFIX = "/v2"
HEADER_LENGTH = "Inference-Header-Content-Length"
EXTENSIONS = ["binary_tensor_data"]
PLATFORM = "onnxruntime_onnx"

# Protocol datatype <-> numpy dtype (BYTES and BF16 are not used by any model here).
DATATYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(bool),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
}
_BY_DTYPE = {dt: name for name, dt in DATATYPES.items()}
# Every output kind a manifest may declare holds probabilities or weights.
OUTPUT_DATATYPE = "FP32"


# Response schemas, for the OpenAPI document.
class TensorMetadata(BaseModel):
    """A tensor's name, datatype and shape (-1 for a dynamic dimension)."""

    name: str
    datatype: str = Field(examples=["FP32"])
    shape: list[int] = Field(examples=[[-1, 3, -1, -1]])


class ServerMetadata(BaseModel):
    """``GET /v2``."""

    name: str = Field(examples=["attnserve"])
    version: str
    extensions: list[str] = Field(examples=[EXTENSIONS])


class ModelMetadata(BaseModel):
    """``GET /v2/models/{name}``."""

    name: str = Field(examples=["footprints"])
    versions: list[str] = Field(examples=[["1.0.0"]])
    platform: str = Field(examples=[PLATFORM])
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]


class OutputTensor(BaseModel):
    """One output: ``data`` in JSON, or ``parameters.binary_data_size`` bytes after the header."""

    name: str
    datatype: str
    shape: list[int]
    parameters: dict[str, Any] | None = None
    data: list[Any] | None = None


class InferResponse(BaseModel):
    """``POST /v2/models/{name}/infer`` in JSON mode."""

    model_name: str
    model_version: str
    id: str | None = None
    outputs: list[OutputTensor]


def _error_example(status: int, code: str, message: str) -> dict[str, Any]:
    return {
        "description": message,
        "content": {
            "application/json": {
                "example": {"error": message, "code": code, "status": status},
            }
        },
    }


_NOT_FOUND = _error_example(404, "not_found", "no model named 'roads'; served: crops, footprints")
_NOT_READY = _error_example(503, "not_ready", "model repository is loading")
_INFER_ERRORS: dict[int | str, dict[str, Any]] = {
    404: _NOT_FOUND,
    413: _error_example(413, "payload_too_large", "JSON tensor data over 16 MB; use binary data"),
    415: _error_example(
        415, "unsupported_media_type", "Content-Encoding br is not accepted; use gzip or deflate"
    ),
    422: _error_example(
        422,
        "invalid_input",
        "input 'image': shape [1, 3, 100, 100] does not fit [-1, 3, -1, -1] with height "
        "and width multiples of 16",
    ),
    503: _error_example(503, "overloaded", "model footprints:1.1.0 queue is full"),
    504: _error_example(504, "deadline_exceeded", "model footprints:1.1.0 did not answer in time"),
}

_INFER_REQUEST_SCHEMA = {
    "type": "object",
    "required": ["inputs"],
    "properties": {
        "id": {"type": "string"},
        "parameters": {
            "type": "object",
            "properties": {"binary_data_output": {"type": "boolean"}},
        },
        "inputs": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["name", "shape", "datatype"],
                "properties": {
                    "name": {"type": "string"},
                    "shape": {"type": "array", "items": {"type": "integer"}},
                    "datatype": {"type": "string", "enum": list(DATATYPES)},
                    "parameters": {
                        "type": "object",
                        "properties": {"binary_data_size": {"type": "integer"}},
                    },
                    "data": {"type": "array", "items": {}},
                },
            },
        },
        "outputs": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["name"],
                "properties": {
                    "name": {"type": "string"},
                    "parameters": {
                        "type": "object",
                        "properties": {"binary_data": {"type": "boolean"}},
                    },
                },
            },
        },
    },
}
_INFER_EXAMPLE = {
    "inputs": [
        {"name": "series", "shape": [1, 2, 10], "datatype": "FP32", "data": [500.0] * 20},
        {"name": "days", "shape": [1, 2], "datatype": "FP32", "data": [90.0, 120.0]},
        {"name": "valid", "shape": [1, 2], "datatype": "BOOL", "data": [True, True]},
    ]
}

router = APIRouter(prefix=PREFIX, tags=["open inference protocol (v2)"])


def _dims(shape: list[int | str]) -> list[int]:
    return [d if isinstance(d, int) else -1 for d in shape]


def _datatype(dtype: str | np.dtype[Any]) -> str:
    name = _BY_DTYPE.get(np.dtype(dtype))
    if name is None:
        raise ValueError(f"no protocol datatype for {dtype}")
    return name


def model_metadata(served: ServedModel, versions: list[str]) -> dict[str, Any]:
    """A model's protocol metadata: its graph inputs and every output, attention included."""
    m = served.manifest
    return {
        "name": m.name,
        "versions": versions,
        "platform": PLATFORM,
        "inputs": [
            {"name": t.name, "datatype": _datatype(t.dtype), "shape": _dims(t.shape)}
            for t in m.tensors
        ],
        "outputs": [
            {"name": o.name, "datatype": OUTPUT_DATATYPE, "shape": _dims(o.shape)}
            for o in m.outputs
        ],
    }


def _served(state: State, request: Request, name: str, version: str | None) -> ServedModel:
    served = state.repository.get(f"{name}:{version}" if version else name)
    # The Observe middleware labels request metrics by model.
    request.state.model = served.manifest.name
    return served


@router.get("", summary="Server metadata", response_model=ServerMetadata)
async def server_metadata() -> JSONBody:
    """Name, version and the protocol extensions this server supports."""
    return JSONBody({"name": "attnserve", "version": __version__, "extensions": EXTENSIONS})


@router.get("/health/live", summary="Server liveness")
async def server_live() -> JSONBody:
    """200 as long as the process answers."""
    return JSONBody({"live": True})


@router.get(
    "/health/ready",
    summary="Server readiness",
    responses={503: _error_example(503, "not_ready", "model repository is loading")},
)
async def server_ready(state: State) -> JSONBody:
    """200 when models are loaded and the server is not draining, else 503."""
    ready, body = readiness(state)
    if not ready:
        raise NotReady("; ".join(body["reasons"]))
    return JSONBody({"ready": True})


async def _metadata(state: State, request: Request, name: str, version: str | None) -> JSONBody:
    served = _served(state, request, name, version)
    versions = [v.manifest.version for v in state.repository.versions(served.manifest.name)]
    return JSONBody(model_metadata(served, versions))


@router.get(
    "/models/{name}",
    summary="Model metadata",
    response_model=ModelMetadata,
    responses={404: _NOT_FOUND},
)
async def get_model_metadata(name: str, state: State, request: Request) -> JSONBody:
    """The latest version's input and output tensors (attention outputs included)."""
    return await _metadata(state, request, name, None)


@router.get(
    "/models/{name}/versions/{version}",
    summary="Model version metadata",
    response_model=ModelMetadata,
    responses={404: _NOT_FOUND},
)
async def get_version_metadata(name: str, version: str, state: State, request: Request) -> JSONBody:
    """One version's input and output tensors."""
    return await _metadata(state, request, name, version)


async def _ready(state: State, request: Request, name: str, version: str | None) -> JSONBody:
    served = _served(state, request, name, version)
    if state.draining or not served.batcher.running:
        raise NotReady(f"model {served.manifest.ref} is not accepting requests")
    return JSONBody({"name": served.manifest.name, "ready": True})


@router.get(
    "/models/{name}/ready",
    summary="Model readiness",
    responses={404: _NOT_FOUND, 503: _NOT_READY},
)
async def model_ready(name: str, state: State, request: Request) -> JSONBody:
    """200 when the model's latest version takes requests."""
    return await _ready(state, request, name, None)


@router.get(
    "/models/{name}/versions/{version}/ready",
    summary="Model version readiness",
    responses={404: _NOT_FOUND, 503: _NOT_READY},
)
async def version_ready(name: str, version: str, state: State, request: Request) -> JSONBody:
    """200 when this model version takes requests."""
    return await _ready(state, request, name, version)


_INFER_OPENAPI: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": _INFER_REQUEST_SCHEMA, "example": _INFER_EXAMPLE},
            "application/octet-stream": {
                "schema": {"type": "string", "format": "binary"},
                "description": (
                    "binary tensor data extension: the JSON request (its length in the "
                    "Inference-Header-Content-Length header), then each input with "
                    "parameters.binary_data_size, raw little-endian, row-major, in input order"
                ),
            },
        },
    }
}
_INFER_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": (
            "JSON outputs; with binary outputs the body is application/octet-stream: the "
            "JSON header (Inference-Header-Content-Length bytes), then each binary output"
        ),
        "content": {"application/octet-stream": {"schema": {"type": "string"}}},
    },
    **_INFER_ERRORS,
}


@router.post(
    "/models/{name}/infer",
    summary="Inference",
    response_model=InferResponse,
    responses=_INFER_RESPONSES,
    openapi_extra=_INFER_OPENAPI,
)
async def infer(name: str, state: State, request: Request) -> Response:
    """Run the latest version on raw tensors; every output (attention too) can be asked for."""
    return await _infer(state, request, name, None)


@router.post(
    "/models/{name}/versions/{version}/infer",
    summary="Inference on one version",
    response_model=InferResponse,
    responses=_INFER_RESPONSES,
    openapi_extra=_INFER_OPENAPI,
)
async def infer_version(name: str, version: str, state: State, request: Request) -> Response:
    """Run one model version on raw tensors."""
    return await _infer(state, request, name, version)


@dataclass(frozen=True)
class RequestedOutput:
    """An output the client asked for, and whether it wants it as binary data."""

    name: str
    binary: bool


async def _infer(state: State, request: Request, name: str, version: str | None) -> Response:
    served = _served(state, request, name, version)
    limit = int(state.settings.max_json_mb * 2**20)
    try:
        raw = await request.body()
    except ClientDisconnect:
        return client_closed(request)
    encoding = request.headers.get("content-encoding")
    header_length = request.headers.get(HEADER_LENGTH.lower())
    if header_length is not None and (encoding or "identity").strip().lower() != "identity":
        # The JSON header alone first: a small compressed body may declare a
        # huge tensor, refused here before it is inflated.
        _header_first(served, raw, encoding, header_length, limit, state)
    body = _decompress(raw, encoding, int(state.settings.max_upload_mb * 2**20))
    del raw
    header, binary = _split(body, header_length, limit)
    _check_declared(served, header, state)
    feed = decode_inputs(served.manifest, header.get("inputs"), binary)
    wanted = requested_outputs(served.manifest, header)
    need = check_feed(served, feed, state.settings)
    held = await asyncio.to_thread(state.budget.reserve, need, "the inference request")
    try:
        outputs = await served.batcher.submit(feed, state.settings.request_timeout_s)
        del feed, body, binary
        return encode_response(served.manifest, header.get("id"), outputs, wanted)
    finally:
        await held.release_async()


def _header_first(
    served: ServedModel,
    raw: bytes,
    encoding: str | None,
    header_length: str,
    limit: int,
    state: State,
) -> None:
    try:
        size = min(int(header_length), limit)
    except ValueError:
        return  # _split names the problem
    if size <= 0:
        return
    try:
        head = _decompress(raw, encoding, size, partial=True)
    except InvalidInput:
        return  # the full inflate names it
    try:
        header = orjson.loads(head)
    except orjson.JSONDecodeError:
        return
    if isinstance(header, dict):
        _check_declared(served, header, state)


def _check_declared(served: ServedModel, header: dict[str, Any], state: State) -> None:
    """Refuse a request whose declared tensor shapes are over a limit, before decoding data."""
    first = served.manifest.tensors[0].name
    items = header.get("inputs")
    for item in items if isinstance(items, list) else []:
        if not isinstance(item, dict) or item.get("name") != first:
            continue
        shape = item.get("shape")
        if isinstance(shape, list) and all(
            isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape
        ):
            state.budget.check(check_shape(served, shape, state.settings), "the inference request")


def check_shape(served: ServedModel, shape: list[int] | tuple[int, ...], settings: Settings) -> int:
    """Hold the first input's shape to ``/predict``'s limits; returns the estimated memory.

    Images: at most ``max_sync_pixels`` each; series: at most ``max_dates``
    dates (and the model's).

    Raises:
        PayloadTooLarge: an image over the synchronous limit.
        UnsupportedRaster: too many dates.
    """
    manifest = served.manifest
    name = manifest.tensors[0].name
    if manifest.task == "segmentation":
        if len(shape) != 4:
            return 0  # decode_inputs names the problem
        batch, bands, height, width = shape
        if height * width > settings.max_sync_pixels:
            raise PayloadTooLarge(
                f"input {name!r}: a {width}x{height} image is over the "
                f"{settings.max_sync_pixels} pixel limit per image (ATTNSERVE_MAX_SYNC_PIXELS); "
                "send a GeoTIFF to /predict, which tiles large scenes"
            )
        return batch * image_bytes(served, height * width, bands, 4)
    if len(shape) < 2:
        return 0
    rows, dates = shape[:2]
    limit = min(settings.max_dates, manifest.input.max_dates or settings.max_dates)
    if dates > limit:
        raise UnsupportedRaster(
            f"input {name!r}: {dates} dates given; at most {limit} are taken", got_dates=dates
        )
    return stack_bytes(served, rows, dates, 4)


def check_feed(served: ServedModel, feed: dict[str, np.ndarray], settings: Settings) -> int:
    """Hold raw tensors to the limits ``/predict`` has; returns their estimated memory in bytes.

    The shape limits of :func:`check_shape`; float values finite (days within
    float32), and a valid date in every row of a series.

    Raises:
        PayloadTooLarge: an image over the synchronous limit.
        InvalidInput: values or masks that ``/predict`` would refuse.
    """
    manifest = served.manifest
    for name, array in feed.items():
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            raise InvalidInput(
                f"input {name!r}: values must be finite and within +-{FLOAT32_MAX:.4g}"
            )
    need = check_shape(served, feed[manifest.tensors[0].name].shape, settings)
    if manifest.task == "segmentation":
        return need
    for spec in manifest.tensors[1:]:
        array = feed[spec.name]
        if array.dtype == np.bool_ and array.ndim == 2 and not array.any(axis=1).all():
            row = int(np.flatnonzero(~array.any(axis=1))[0])
            raise InvalidInput(f"input {spec.name!r}: row {row} has no valid date")
    return need


def _decompress(body: bytes, encoding: str | None, limit: int, partial: bool = False) -> bytes:
    # partial: the first ``limit`` bytes are all that is wanted.
    enc = (encoding or "identity").strip().lower()
    if enc == "identity":
        return body
    if enc not in ("gzip", "deflate"):
        raise UnsupportedMediaType(f"Content-Encoding {enc} is not accepted; use gzip or deflate")
    # wbits 16+MAX for gzip, MAX for zlib ("deflate" in HTTP means zlib); capped so a
    # small compressed body cannot expand past the upload limit.
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS if enc == "gzip" else zlib.MAX_WBITS)
    try:
        out = inflater.decompress(body, limit + 1)
    except zlib.error:
        raise InvalidInput(f"the body is not valid {enc} data") from None
    if partial:
        return out[:limit]
    if len(out) > limit or inflater.unconsumed_tail:
        raise PayloadTooLarge(f"decompressed body is over the {limit / 2**20:g} MB limit")
    return out


def _split(body: bytes, header_length: str | None, json_limit: int) -> tuple[dict[str, Any], bytes]:
    if header_length is None:
        size = len(body)
    else:
        try:
            size = int(header_length)
        except ValueError:
            raise InvalidInput(f"{HEADER_LENGTH} must be an integer") from None
        if not 0 < size <= len(body):
            raise InvalidInput(f"{HEADER_LENGTH} {size} does not fit a {len(body)}-byte body")
    if size > json_limit:
        raise PayloadTooLarge(
            f"JSON request over {json_limit / 2**20:g} MB; send tensors as binary data"
        )
    try:
        header = orjson.loads(body[:size])
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"the inference request is not valid JSON: {exc.msg}") from None
    if not isinstance(header, dict):
        raise InvalidInput("the inference request must be a JSON object")
    return header, body[size:]


def _shape_of(name: str, raw: Any) -> list[int]:
    if not isinstance(raw, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in raw
    ):
        raise InvalidInput(f"input {name!r}: shape must be a list of non-negative integers")
    return raw


def decode_inputs(manifest: Manifest, inputs: Any, binary: bytes) -> dict[str, np.ndarray]:
    """Protocol input tensors as a batch-first feed, checked against the manifest.

    Args:
        manifest: the model's manifest (input names, dtypes, shapes).
        inputs: the request's ``inputs`` list.
        binary: the bytes after the JSON header, consumed in input order.

    Raises:
        InvalidInput: a missing or unknown input, a wrong datatype, shape or size.
    """
    if not isinstance(inputs, list) or not inputs:
        raise InvalidInput("inputs: give one tensor per model input")
    specs = {t.name: t for t in manifest.tensors}
    feed: dict[str, np.ndarray] = {}
    offset = 0
    symbols: dict[str, tuple[int, str]] = {}
    for item in inputs:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise InvalidInput("inputs: each tensor needs a name, shape and datatype")
        name = item["name"]
        if name not in specs:
            raise InvalidInput(
                f"input {name!r} is not an input of model {manifest.name}; "
                f"it takes {', '.join(specs)}"
            )
        if name in feed:
            raise InvalidInput(f"input {name!r} is given twice")
        spec = specs[name]
        expected = _datatype(spec.dtype)
        datatype = item.get("datatype")
        if datatype != expected:
            raise InvalidInput(f"input {name!r}: datatype {datatype} given, model takes {expected}")
        shape = _shape_of(name, item.get("shape"))
        _check_shape(manifest, name, shape, spec.shape, symbols)
        dtype = DATATYPES[expected]
        count = math.prod(shape)
        params = item.get("parameters") or {}
        size = params.get("binary_data_size") if isinstance(params, dict) else None
        if size is not None:
            if not isinstance(size, int) or size < 0 or offset + size > len(binary):
                raise InvalidInput(f"input {name!r}: binary_data_size {size} exceeds the body")
            if size != count * dtype.itemsize:
                raise InvalidInput(
                    f"input {name!r}: {size} bytes of binary data for shape {shape} of "
                    f"{expected}, which needs {count * dtype.itemsize}"
                )
            array = np.frombuffer(binary, dtype=dtype.newbyteorder("<"), count=count, offset=offset)
            array = array.astype(dtype, copy=False)
            offset += size
        else:
            array = _from_json(name, item.get("data"), dtype, count)
        feed[name] = array.reshape(shape)
    if offset != len(binary):
        raise InvalidInput(f"{len(binary) - offset} bytes of binary data belong to no input")
    first = manifest.tensors[0].name
    for spec in manifest.tensors:
        if spec.name not in feed and spec.default == "band_mean" and first in feed:
            image = feed[first]
            feed[spec.name] = image.reshape(*image.shape[:2], -1).mean(axis=2).astype(np.float32)
    missing = [n for n in specs if n not in feed]
    if missing:
        raise InvalidInput(f"model {manifest.name} also needs input(s) {', '.join(missing)}")
    return feed


def _from_json(name: str, data: Any, dtype: np.dtype[Any], count: int) -> np.ndarray:
    if not isinstance(data, list):
        raise InvalidInput(f"input {name!r}: give data (a list) or binary_data_size")
    try:
        array = np.asarray(data)
    except ValueError:
        raise InvalidInput(f"input {name!r}: data must be a (nested) list of numbers") from None
    if array.size != count:
        raise InvalidInput(f"input {name!r}: {array.size} values given, the shape needs {count}")
    kind = array.dtype.kind
    fits = kind == "b" if dtype.kind == "b" else kind in "iuf"
    if count and not fits:
        raise InvalidInput(f"input {name!r}: data values do not match datatype {_datatype(dtype)}")
    # Values beyond the datatype's range become inf here; check_feed refuses them.
    with np.errstate(over="ignore", invalid="ignore"):
        return array.astype(dtype, copy=False).ravel()


def _check_shape(
    manifest: Manifest,
    name: str,
    shape: list[int],
    spec: list[int | str],
    symbols: dict[str, tuple[int, str]],
) -> None:
    def refuse(why: str) -> InvalidInput:
        return InvalidInput(f"input {name!r}: shape {shape} does not fit {_dims(spec)}: {why}")

    if len(shape) != len(spec):
        raise refuse(f"{len(spec)} dimensions expected")
    multiple = manifest.input.size_multiple or 1
    for i, (got, want) in enumerate(zip(shape, spec, strict=True)):
        if isinstance(want, int):
            if got != want:
                raise refuse(f"dimension {i} must be {want}")
            continue
        if got == 0:
            raise refuse(f"dimension {i} ({want}) is empty")
        if want in ("height", "width") and got % multiple:
            raise refuse(f"{want} must be a multiple of {multiple}")
        # A symbolic dimension names the same size in every input (batch, dates).
        seen = symbols.setdefault(want, (got, name))
        if seen[0] != got:
            raise refuse(f"{want} is {got} here but {seen[0]} in input {seen[1]!r}")


def requested_outputs(manifest: Manifest, header: dict[str, Any]) -> list[RequestedOutput]:
    """The outputs to return, in order; all of the model's when none are named."""
    params = header.get("parameters") or {}
    default_binary = bool(isinstance(params, dict) and params.get("binary_data_output", False))
    known = [o.name for o in manifest.outputs]
    asked = header.get("outputs")
    if asked is None:
        return [RequestedOutput(n, default_binary) for n in known]
    if not isinstance(asked, list):
        raise InvalidInput("outputs must be a list of {name, parameters}")
    wanted = []
    for item in asked:
        if not isinstance(item, dict) or item.get("name") not in known:
            got = item.get("name") if isinstance(item, dict) else item
            raise InvalidInput(
                f"output {got!r} is not an output of model {manifest.name}; "
                f"it has {', '.join(known)}"
            )
        p = item.get("parameters") or {}
        binary = p.get("binary_data", default_binary) if isinstance(p, dict) else default_binary
        wanted.append(RequestedOutput(item["name"], bool(binary)))
    return wanted


def encode_response(
    manifest: Manifest,
    request_id: Any,
    outputs: dict[str, np.ndarray],
    wanted: list[RequestedOutput],
) -> Response:
    """The inference response: JSON, or JSON header plus binary outputs."""
    tensors: list[dict[str, Any]] = []
    payloads: list[bytes] = []
    for out in wanted:
        array = np.ascontiguousarray(outputs[out.name])
        tensor: dict[str, Any] = {
            "name": out.name,
            "datatype": _datatype(array.dtype),
            "shape": list(array.shape),
        }
        if out.binary:
            raw = array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()
            tensor["parameters"] = {"binary_data_size": len(raw)}
            payloads.append(raw)
        else:
            tensor["data"] = array.ravel()
        tensors.append(tensor)
    body: dict[str, Any] = {"model_name": manifest.name, "model_version": manifest.version}
    if isinstance(request_id, str) and request_id:
        body["id"] = request_id
    body["outputs"] = tensors
    header = orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)
    headers = {"Cache-Control": "no-store"}
    if not payloads:
        return Response(header, media_type="application/json", headers=headers)
    headers[HEADER_LENGTH] = str(len(header))
    return Response(
        b"".join([header, *payloads]), media_type="application/octet-stream", headers=headers
    )


class OipErrorShape:
    """Rewrites JSON errors under ``/v2`` to the protocol's ``{"error": "<message>"}``.

    The server's ``code`` and ``status`` stay beside the message, so nothing is
    lost; only answers with status 400 or more and a JSON body are touched.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        if not (path == PREFIX or path.startswith(PREFIX + "/")):
            await self.app(scope, receive, send)
            return
        start: Message | None = None
        chunks: list[bytes] = []

        async def rewrite(message: Message) -> None:
            nonlocal start
            if message["type"] == "http.response.start":
                ctype = dict(message.get("headers", [])).get(b"content-type", b"")
                if message["status"] >= 400 and ctype.startswith(b"application/json"):
                    start = message
                    return
                await send(message)
                return
            if start is None or message["type"] != "http.response.body":
                await send(message)
                return
            chunks.append(message.get("body", b""))
            if message.get("more_body", False):
                return
            body = _protocol_error(b"".join(chunks), start["status"])
            headers = [(k, v) for k, v in start.get("headers", []) if k != b"content-length"]
            headers.append((b"content-length", str(len(body)).encode()))
            await send({**start, "headers": headers})
            await send({"type": "http.response.body", "body": body})

        await self.app(scope, receive, rewrite)


def _protocol_error(body: bytes, status: int) -> bytes:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        data = None
    error = data.get("error") if isinstance(data, dict) else None
    if isinstance(error, str):
        return body
    if isinstance(error, dict):
        out = {
            "error": str(error.get("message", "error")),
            "code": error.get("code", "error"),
            "status": error.get("status", status),
        }
        if error.get("detail"):
            out["detail"] = error["detail"]
    else:
        out = {"error": "error", "code": "error", "status": status}
    return orjson.dumps(out)
