"""The Open Inference Protocol (KServe v2) over REST, with the binary tensor extension.

Standard clients (``tritonclient[http]``, KServe's ``InferenceRESTClient``) can
list, describe and run the served models. Requests go through each model's
dynamic batcher, like ``/predict``, so they share batches and metrics with it;
the model's attention outputs are plain output tensors here. The wire format
lives in :mod:`service.protocol`; this router only reads HTTP and answers it.

Errors on ``/v2`` paths take the protocol's shape (see
:mod:`service.protocol.oip_errors`): :class:`OipErrorShape` rewrites every
error answered under ``/v2``, including those of middleware (401, 413) and
unknown paths.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request
from starlette.requests import ClientDisconnect
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service import __version__
from service.api.deps import State, resolve_model
from service.api.errors import client_closed
from service.api.openapi_v2 import (
    INFER_OPENAPI,
    INFER_RESPONSES,
    NOT_FOUND,
    NOT_READY,
    InferResponse,
    ModelMetadata,
    ServerMetadata,
)
from service.api.responses import JSONBody
from service.api.routes.health import readiness
from service.api.state import AppState
from service.errors import NotReady
from service.pipeline import tensors
from service.pipeline.tensors import TensorLimits, check_feed, check_shape
from service.protocol.oip import (
    EXTENSIONS,
    HEADER_LENGTH,
    PREFIX,
    encode_response,
    model_metadata,
    requested_outputs,
)
from service.protocol.oip_body import (
    declared_shapes,
    decompress,
    is_compressed,
    peek_header,
    split_header,
)
from service.protocol.oip_errors import is_protocol_path, protocol_error
from service.protocol.oip_inputs import decode_inputs
from service.runtime.repository import ServedModel

router = APIRouter(prefix=PREFIX, tags=["open inference protocol (v2)"])


def _model(state: AppState, request: Request, name: str, version: str | None) -> ServedModel:
    return resolve_model(state, request, f"{name}:{version}" if version else name)


@router.get("", summary="Server metadata", response_model=ServerMetadata)
async def server_metadata() -> JSONBody:
    """Name, version and the protocol extensions this server supports."""
    return JSONBody({"name": "attnserve", "version": __version__, "extensions": EXTENSIONS})


@router.get("/health/live", summary="Server liveness")
async def server_live() -> JSONBody:
    """200 as long as the process answers."""
    return JSONBody({"live": True})


@router.get("/health/ready", summary="Server readiness", responses={503: NOT_READY})
async def server_ready(state: State) -> JSONBody:
    """200 when models are loaded and the server is not draining, else 503."""
    ready, body = readiness(state)
    if not ready:
        raise NotReady("; ".join(body["reasons"]))
    return JSONBody({"ready": True})


# Each model route takes an optional version: FastAPI reads it from the path
# where the path has one (and from the query elsewhere), so one handler serves
# the latest and the versioned form alike.
@router.get(
    "/models/{name}",
    summary="Model metadata",
    response_model=ModelMetadata,
    responses={404: NOT_FOUND},
)
@router.get(
    "/models/{name}/versions/{version}",
    summary="Model version metadata",
    response_model=ModelMetadata,
    responses={404: NOT_FOUND},
)
async def get_model_metadata(
    name: str, state: State, request: Request, version: str | None = None
) -> JSONBody:
    """A model version's input and output tensors, attention included (latest by default)."""
    served = _model(state, request, name, version)
    versions = [v.manifest.version for v in state.repository.versions(served.manifest.name)]
    return JSONBody(model_metadata(served.manifest, versions))


@router.get(
    "/models/{name}/ready",
    summary="Model readiness",
    responses={404: NOT_FOUND, 503: NOT_READY},
)
@router.get(
    "/models/{name}/versions/{version}/ready",
    summary="Model version readiness",
    responses={404: NOT_FOUND, 503: NOT_READY},
)
async def model_ready(
    name: str, state: State, request: Request, version: str | None = None
) -> JSONBody:
    """200 when the model version (latest by default) takes requests."""
    served = _model(state, request, name, version)
    if state.draining or not served.batcher.running:
        raise NotReady(f"model {served.manifest.ref} is not accepting requests")
    return JSONBody({"name": served.manifest.name, "ready": True})


@router.post(
    "/models/{name}/infer",
    summary="Inference",
    response_model=InferResponse,
    responses=INFER_RESPONSES,
    openapi_extra=INFER_OPENAPI,
)
@router.post(
    "/models/{name}/versions/{version}/infer",
    summary="Inference on one version",
    response_model=InferResponse,
    responses=INFER_RESPONSES,
    openapi_extra=INFER_OPENAPI,
)
async def infer(name: str, state: State, request: Request, version: str | None = None) -> Response:
    """Run a model version (latest by default) on raw tensors; attention outputs too."""
    served = _model(state, request, name, version)
    settings = state.settings
    json_limit = int(settings.max_json_mb * 2**20)
    limits = TensorLimits(settings.max_sync_pixels, settings.max_dates)
    try:
        raw = await request.body()
    except ClientDisconnect:
        return client_closed(request)
    encoding = request.headers.get("content-encoding")
    header_length = request.headers.get(HEADER_LENGTH.lower())
    if header_length is not None and is_compressed(encoding):
        # The JSON header alone first: a small compressed body may declare a
        # huge tensor, refused here before it is inflated.
        peeked = peek_header(raw, encoding, header_length, json_limit)
        if peeked is not None:
            _check_declared(state, served, peeked, limits)
    body = decompress(raw, encoding, int(settings.max_upload_mb * 2**20))
    del raw
    header, binary = split_header(body, header_length, json_limit)
    _check_declared(state, served, header, limits)
    feed = decode_inputs(served.manifest, header.get("inputs"), binary)
    wanted = requested_outputs(served.manifest, header)
    need = check_feed(served, feed, limits)
    held = await asyncio.to_thread(state.budget.reserve, need, "the inference request")
    try:
        outputs = await tensors.infer(served, feed, settings.request_timeout_s)
        del feed, body, binary
        encoded = encode_response(served.manifest, header.get("id"), outputs, wanted)
        return Response(encoded.body, media_type=encoded.media_type, headers=encoded.headers)
    finally:
        await held.release_async()


def _check_declared(
    state: AppState, served: ServedModel, header: dict[str, Any], limits: TensorLimits
) -> None:
    """Refuse a request whose declared tensor shapes are over a limit, before decoding data."""
    for shape in declared_shapes(served.manifest, header):
        state.budget.check(check_shape(served, shape, limits), "the inference request")


class OipErrorShape:
    """Rewrites JSON errors under ``/v2`` to the protocol's ``{"error": "<message>"}``.

    Only answers with status 400 or more and a JSON body are touched.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        if not is_protocol_path(path):
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
            body = protocol_error(b"".join(chunks), start["status"])
            headers = [(k, v) for k, v in start.get("headers", []) if k != b"content-length"]
            headers.append((b"content-length", str(len(body)).encode()))
            await send({**start, "headers": headers})
            await send({"type": "http.response.body", "body": body})

        await self.app(scope, receive, rewrite)
