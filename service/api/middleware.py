"""ASGI middleware: request metrics, admission, body limits and security headers."""

from __future__ import annotations

import asyncio
import collections
import hashlib
import hmac
import re
import time

from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api.errors import error_response
from service.jobs.record import owner_of
from service.metrics import Metrics


class BodyRefused(Exception):
    """Raised inside ``receive`` when a body passes its limit or stalls while streaming."""


_JSON_TYPES = (b"application/json",)


class BodyLimit:
    """Refuses bodies over their limit (413) and bodies that stall or trickle (408).

    Content-Length is checked up front; chunked bodies are counted as they
    stream in, so a lying or missing Content-Length gains nothing. JSON bodies
    have their own, smaller limit. Each wait for the next chunk is bounded by
    ``read_timeout_s``, and every ``rate_window_s`` (the first window is the
    grace period) at least ``min_rate_bps`` bytes per second must have come: a
    client sending one byte every few seconds never trips a gap timeout, but
    it trips this. Once a body is refused, whatever the app answers (its parser
    may have turned the error into a 422) is replaced by the refusal.
    """

    def __init__(
        self,
        app: ASGIApp,
        max_bytes: int,
        max_json_bytes: int | None = None,
        read_timeout_s: float | None = None,
        max_head_bytes: int = 64 * 1024,
        min_rate_bps: float = 0.0,
        rate_window_s: float = 10.0,
    ) -> None:
        self.app = app
        self.min_rate_bps = min_rate_bps
        self.rate_window_s = rate_window_s
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
        loop = asyncio.get_running_loop()
        # The rate is measured over time spent waiting for the client, not wall
        # time: a handler that reads its body late must not make the client slow.
        waited = 0.0
        window_seen = 0

        def trickling() -> bool:
            """Whether the window that just ended brought too few bytes (then a new one starts)."""
            nonlocal waited, window_seen
            if not self.min_rate_bps or waited < self.rate_window_s:
                return False
            if seen - window_seen < self.min_rate_bps * self.rate_window_s:
                return True
            waited, window_seen = 0.0, seen
            return False

        async def next_message() -> Message:
            nonlocal refusal, waited
            # One receive, waited for in steps: the rate is judged at each window's
            # end even while no byte comes.
            pending = asyncio.ensure_future(receive())
            stall_left = self.read_timeout_s or float("inf")
            while True:
                window_left = self.rate_window_s - waited if self.min_rate_bps else float("inf")
                step = max(0.0, min(stall_left, window_left))
                began = loop.time()
                done, _ = await asyncio.wait({pending}, timeout=step)
                spent = loop.time() - began
                waited += spent
                stall_left -= spent
                if done:
                    return pending.result()
                if stall_left <= 0:
                    refusal = self._too_slow()
                elif trickling():
                    refusal = self._trickling()
                else:
                    continue
                pending.cancel()
                raise BodyRefused

        async def counted() -> Message:
            nonlocal seen, body_done, refusal
            if refusal is not None:
                raise BodyRefused
            if body_done or (self.read_timeout_s is None and not self.min_rate_bps):
                # After the body only http.disconnect is left to wait for.
                message = await receive()
            else:
                message = await next_message()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                body_done = not message.get("more_body", False)
                if seen > limit:
                    refusal = self._too_large(limit)
                    raise BodyRefused
                if not body_done and trickling():
                    refusal = self._trickling()
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

    def _trickling(self) -> Response:
        return error_response(
            408,
            "request_timeout",
            f"the request body is arriving too slowly: under {self.min_rate_bps:g} bytes/s "
            f"over {self.rate_window_s:g} s",
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

    A request counts against ``max_in_flight`` once its body is in (or once it
    is answered, if sooner). While its body is still arriving it holds an
    upload place instead: at most ``max_uploads`` in all (503 past it) and at
    most ``max_uploads_per_ip`` per client address and ``max_uploads_per_key``
    per API key (429 past them). So clients that trickle their bodies cannot
    take the slots others' requests are processed in; BodyLimit then cuts them
    off by rate. Probes and metrics are always let through, so a busy or
    draining server still says how it is. The draining flag is read from the
    app's state (set by the lifespan, and by the signal handler on SIGTERM).
    """

    EXEMPT_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})

    def __init__(
        self,
        app: ASGIApp,
        max_in_flight: int,
        max_uploads: int = 0,
        max_uploads_per_ip: int = 0,
        max_uploads_per_key: int = 0,
    ) -> None:
        self.app = app
        self.max_in_flight = max_in_flight
        self.max_uploads = max_uploads
        self.max_uploads_per_ip = max_uploads_per_ip
        self.max_uploads_per_key = max_uploads_per_key
        self.in_flight = 0
        self.uploads = 0
        self._per_ip: collections.Counter[str] = collections.Counter()
        self._per_key: collections.Counter[str] = collections.Counter()

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
        if not _has_body(scope):
            self.in_flight += 1
            try:
                await self.app(scope, receive, send)
            finally:
                self.in_flight -= 1
            return
        ip = str((scope.get("client") or ("",))[0])
        key = hashlib.sha256(_bearer(scope)).hexdigest()[:16] if _bearer(scope) else ""
        refused = self._refuse_upload(ip, key)
        if refused is not None:
            await refused(scope, receive, send)
            return
        self._count_upload(ip, key, 1)
        uploading = True

        def body_in() -> None:
            nonlocal uploading
            if uploading:
                uploading = False
                self._count_upload(ip, key, -1)
                self.in_flight += 1

        async def tracked_receive() -> Message:
            message = await receive()
            if message["type"] != "http.request" or not message.get("more_body", False):
                body_in()
            return message

        async def tracked_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                body_in()  # answered before its body was read whole
            await send(message)

        try:
            await self.app(scope, tracked_receive, tracked_send)
        finally:
            if uploading:
                self._count_upload(ip, key, -1)
            else:
                self.in_flight -= 1

    def _refuse_upload(self, ip: str, key: str) -> Response | None:
        if self.max_uploads and self.uploads >= self.max_uploads:
            return error_response(
                503,
                "overloaded",
                f"too many request bodies arriving (limit {self.max_uploads}); retry shortly",
                headers={"Retry-After": "1"},
            )
        if key and self.max_uploads_per_key and self._per_key[key] >= self.max_uploads_per_key:
            return error_response(
                429,
                "too_many_requests",
                f"this API key already has {self._per_key[key]} request bodies arriving (limit "
                f"{self.max_uploads_per_key}); finish those first",
                headers={"Retry-After": "1"},
            )
        if self.max_uploads_per_ip and self._per_ip[ip] >= self.max_uploads_per_ip:
            return error_response(
                429,
                "too_many_requests",
                f"this address already has {self._per_ip[ip]} request bodies arriving (limit "
                f"{self.max_uploads_per_ip}); finish those first",
                headers={"Retry-After": "1"},
            )
        return None

    def _count_upload(self, ip: str, key: str, step: int) -> None:
        self.uploads += step
        self._per_ip[ip] += step
        if self._per_ip[ip] <= 0:
            del self._per_ip[ip]
        if key:
            self._per_key[key] += step
            if self._per_key[key] <= 0:
                del self._per_key[key]


def _has_body(scope: Scope) -> bool:
    for name, value in scope["headers"]:
        if name == b"transfer-encoding":
            return True
        if name == b"content-length":
            return value.strip() not in (b"0", b"")
    return False


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
                return bytes(token.strip())
    return b""
