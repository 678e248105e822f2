"""One table from domain exceptions to HTTP statuses, and one error body shape.

Every error answer is ``{"error": {"code", "message", "status", "detail"?}}``;
none carries a path, a stack trace or file contents.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from service import errors as e

log = logging.getLogger(__name__)

# The status nginx logs for a client that closed its connection before the
# answer: the request was not served, and no one is there to tell.
CLIENT_CLOSED = 499

STATUS: dict[type[e.AttnserveError], int] = {
    e.InvalidInput: 422,
    e.InvalidRaster: 422,
    e.UnsupportedRaster: 422,
    e.PayloadTooLarge: 413,
    e.UnsupportedMediaType: 415,
    e.Forbidden: 403,
    e.NotFound: 404,
    e.Unauthorized: 401,
    e.Conflict: 409,
    e.Overloaded: 503,
    e.TooManyRequests: 429,
    e.NotReady: 503,
    e.InferenceFailed: 503,
    e.StorageFailed: 503,
    e.DeadlineExceeded: 504,
}
_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    408: "request_timeout",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_input",
    429: "too_many_requests",
    431: "request_header_fields_too_large",
    500: "internal_error",
    503: "unavailable",
    504: "deadline_exceeded",
}

ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message", "status"],
            "properties": {
                "code": {"type": "string"},
                "message": {"type": "string"},
                "status": {"type": "integer"},
                "detail": {"type": "object"},
            },
        }
    },
}
_ERROR_CONTENT = {"application/json": {"schema": ERROR_SCHEMA}}
# Documented on every route (``include_router(..., responses=ERROR_RESPONSES)``), so
# the OpenAPI spec names every answer a client can get; 422 replaces FastAPI's own
# validation schema, which this server never answers with.
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"description": "no valid API key (when keys are configured)", "content": _ERROR_CONTENT},
    403: {"description": "an input URL this server may not read", "content": _ERROR_CONTENT},
    404: {"description": "no such model, job or layer", "content": _ERROR_CONTENT},
    408: {"description": "the request body stalled", "content": _ERROR_CONTENT},
    413: {"description": "body, part or raster over a limit", "content": _ERROR_CONTENT},
    415: {"description": "Content-Type not accepted", "content": _ERROR_CONTENT},
    422: {"description": "invalid input", "content": _ERROR_CONTENT},
    429: {
        "description": "this key has as many scene jobs queued or running as it may; see "
        "Retry-After",
        "content": _ERROR_CONTENT,
    },
    "4XX": {"description": "other client errors", "content": _ERROR_CONTENT},
    503: {
        "description": "overloaded, draining, not ready or inference failed; see Retry-After",
        "content": _ERROR_CONTENT,
    },
    504: {"description": "the request's deadline passed", "content": _ERROR_CONTENT},
    "5XX": {"description": "server errors", "content": _ERROR_CONTENT},
}


def status_of(exc: e.AttnserveError) -> int:
    """The HTTP status for a domain exception (most specific class wins)."""
    for cls in type(exc).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return 500


def error_response(
    status: int,
    code: str,
    message: str,
    detail: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    """A JSON error answer in the one shape every error has."""
    body: dict[str, Any] = {"code": code, "message": message, "status": status}
    if detail:
        body["detail"] = detail
    return Response(
        orjson.dumps({"error": body}, option=orjson.OPT_SERIALIZE_NUMPY),
        status_code=status,
        media_type="application/json",
        headers={"Cache-Control": "no-store", **(headers or {})},
    )


def client_closed(request: Request) -> Response:
    """The answer to a client that hung up before its body was read: logged, never a 500."""
    log.info("client closed the connection during %s %s", request.method, request.url.path)
    return error_response(
        CLIENT_CLOSED, "client_closed_request", "the client closed the connection"
    )


async def _domain(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, e.AttnserveError)
    status = status_of(exc)
    headers = {}
    if isinstance(exc, e.Overloaded):
        headers["Retry-After"] = str(max(1, round(exc.retry_after_s)))
    elif isinstance(exc, e.NotReady | e.InferenceFailed | e.StorageFailed):
        headers["Retry-After"] = "5"
    elif isinstance(exc, e.Unauthorized):
        headers["WWW-Authenticate"] = "Bearer"
    return error_response(status, exc.code, exc.message, exc.detail or None, headers)


async def _validation(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    errors = [
        {"field": ".".join(str(p) for p in err.get("loc", ())), "message": str(err.get("msg"))}
        for err in exc.errors()[:10]
    ]
    first = errors[0] if errors else {"field": "request", "message": "invalid"}
    return error_response(
        422, "invalid_input", f"{first['field']}: {first['message']}", {"errors": errors}
    )


async def _http(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    code = _HTTP_CODES.get(exc.status_code, "error")
    message = exc.detail if isinstance(exc.detail, str) else code.replace("_", " ")
    return error_response(exc.status_code, code, message, headers=dict(exc.headers or {}))


async def _unexpected(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return error_response(500, "internal_error", "internal server error")


def install(app: FastAPI) -> None:
    """Register the handlers on ``app``."""
    app.add_exception_handler(e.AttnserveError, _domain)
    app.add_exception_handler(RequestValidationError, _validation)
    app.add_exception_handler(StarletteHTTPException, _http)
    app.add_exception_handler(Exception, _unexpected)
