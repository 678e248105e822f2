"""ASGI middleware: request metrics, admission, body limits and security headers."""

from __future__ import annotations

import asyncio
import hmac
import re
import time

from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api.errors import error_response
from service.jobs.store import owner_of
from service.metrics import Metrics


class BodyRefused(Exception):
    """Raised inside ``receive`` when a body passes its limit or stalls while streaming."""


_JSON_TYPES = (b"application/json",)


class BodyLimit:
    """Refuses bodies over their limit (413) and bodies that stall (408).

    Content-Length is checked up front; chunked bodies are counted as they
    stream in, so a lying or missing Content-Length gains nothing. JSON bodies
    have their own, smaller limit. Each wait for the next chunk is bounded by
    ``read_timeout_s``, so a client trickling its body cannot hold a worker.
    Once a body is refused, whatever the app answers (its parser may have
    turned the error into a 422) is replaced by the refusal.
    """

    def __init__(
        self,
        app: ASGIApp,
        max_bytes: int,
        max_json_bytes: int | None = None,
        read_timeout_s: float | None = None,
        max_head_bytes: int = 64 * 1024,
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.max_head_bytes = max_head_bytes
        self.max_json_bytes = max_json_bytes or max_bytes
        self.read_timeout_s = read_timeout_s

    def _limit_for(self, scope: Scope) -> int:
        for name, value in scope["headers"]:
            if name == b"content-type" and value.split(b";")[0].strip().lower() in _JSON_TYPES:
                return min(self.max_bytes, self.max_json_bytes)
        return self.max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        head = len(scope.get("raw_path") or b"") + len(scope.get("query_string", b""))
        head += sum(len(name) + len(value) for name, value in scope["headers"])
        if head > self.max_head_bytes:
            # The HTTP parser's own bound is looser and depends on how the bytes
            # arrived; this one is exact.
            await error_response(
                431,
                "request_header_fields_too_large",
                f"request line and headers are over the {self.max_head_bytes // 1024} KiB limit",
                headers={"Connection": "close"},
            )(scope, receive, send)
            return
        limit = self._limit_for(scope)
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = -1
                if declared < 0 or declared > limit:
                    await self._too_large(limit)(scope, receive, send)
                    return
        seen = 0
        body_done = False
        refusal: Response | None = None
        started = replaced = False

        async def counted() -> Message:
            nonlocal seen, body_done, refusal
            if refusal is not None:
                raise BodyRefused
            if body_done or self.read_timeout_s is None:
                # After the body only http.disconnect is left to wait for.
                message = await receive()
            else:
                try:
                    message = await asyncio.wait_for(receive(), self.read_timeout_s)
                except TimeoutError:
                    refusal = self._too_slow()
                    raise BodyRefused from None
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                body_done = not message.get("more_body", False)
                if seen > limit:
                    refusal = self._too_large(limit)
                    raise BodyRefused
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started, replaced
            if message["type"] == "http.response.start" and not started:
                started = True
                if refusal is not None:
                    # The app answered a body it could not read whole (its parser
                    # may have called it a 422): the client gets the refusal.
                    replaced = True
                    await refusal(scope, receive, send)
                    return
            if not replaced:
                await send(message)

        try:
            await self.app(scope, counted, guarded_send)
        except BodyRefused:
            if not started and refusal is not None:
                await refusal(scope, receive, send)

    def _too_large(self, limit: int) -> Response:
        return error_response(
            413,
            "payload_too_large",
            f"request body is over the {limit / 2**20:g} MB limit",
            headers={"Connection": "close"},
        )

    def _too_slow(self) -> Response:
        return error_response(
            408,
            "request_timeout",
            f"the request body stalled: no data for {self.read_timeout_s:g} s",
            headers={"Connection": "close"},
        )


class Admission:
    """Refuses new work with 503 while draining or when too many requests are in flight.

    Probes and metrics are always let through, so a busy or draining server
    still says how it is. The draining flag is read from the app's state (set
    by the lifespan, and by the signal handler on SIGTERM).
    """

    EXEMPT_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})

    def __init__(self, app: ASGIApp, max_in_flight: int) -> None:
        self.app = app
        self.max_in_flight = max_in_flight
        self.in_flight = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.EXEMPT_PATHS:
            await self.app(scope, receive, send)
            return
        state = getattr(scope.get("app"), "state", None)
        if getattr(getattr(state, "attnserve", None), "draining", False):
            response = error_response(
                503,
                "not_ready",
                "the server is shutting down; retry on another replica",
                headers={"Retry-After": "1", "Connection": "close"},
            )
            await response(scope, receive, send)
            return
        if self.max_in_flight and self.in_flight >= self.max_in_flight:
            response = error_response(
                503,
                "overloaded",
                f"too many requests in flight (limit {self.max_in_flight}); retry shortly",
                headers={"Retry-After": "1"},
            )
            await response(scope, receive, send)
            return
        self.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1


class Observe:
    """Counts and times every request by route template, model and status.

    Also stamps security headers on every answer.
    """

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500
        scope.setdefault("state", {})

        async def wrapped(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = message.setdefault("headers", [])
                headers.append((b"x-content-type-options", b"nosniff"))
                headers.append((b"x-frame-options", b"DENY"))
                headers.append((b"referrer-policy", b"no-referrer"))
            await send(message)

        self.metrics.in_flight.inc()
        try:
            await self.app(scope, receive, wrapped)
        finally:
            self.metrics.in_flight.dec()
            route = _route_of(scope)
            model = str(scope["state"].get("model", ""))
            self.metrics.requests.labels(route, model, str(status)).inc()
            self.metrics.request_duration.labels(route, model).observe(time.perf_counter() - start)


def _route_of(scope: Scope) -> str:
    # The matched route's template, never the raw path (which carries job ids).
    route = scope.get("route")
    path = getattr(route, "path", None)
    return str(path) if path else "unmatched"


class ApiKeyAuth:
    """Requires ``Authorization: Bearer <key>`` on every path but the open ones.

    Keys are compared in constant time against every known key, and the caller's
    owner tag (a hash of the key) is put in the request state so that jobs stay
    private to the key that made them. Keys are never logged.
    """

    OPEN_PATHS = frozenset({"/healthz", "/readyz", "/metrics", "/viewer"})
    # The viewer's pages and assets hold no data (their script fetches the job
    # with the key the person types in); its data endpoints stay guarded.
    OPEN_PAGE = re.compile(r"^/viewer/(static/[A-Za-z0-9_.-]+|[A-Za-z0-9_-]{1,64})$")

    def __init__(self, app: ASGIApp, keys: list[str]) -> None:
        self.app = app
        self.keys = [k.encode() for k in keys]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or path in self.OPEN_PATHS or self.OPEN_PAGE.match(path):
            await self.app(scope, receive, send)
            return
        presented = _bearer(scope)
        matched = False
        for key in self.keys:
            matched |= hmac.compare_digest(presented, key)
        if not presented or not matched:
            response = error_response(
                401,
                "unauthorized",
                "a valid API key is required: send Authorization: Bearer <key>",
                headers={"WWW-Authenticate": "Bearer"},
            )
            await response(scope, receive, send)
            return
        scope.setdefault("state", {})["owner"] = owner_of(presented.decode())
        await self.app(scope, receive, send)


def _bearer(scope: Scope) -> bytes:
    for name, value in scope["headers"]:
        if name == b"authorization":
            scheme, _, token = value.partition(b" ")
            if scheme.lower() == b"bearer":
                return token.strip()
    return b""
