"""Admission: 503 while draining or full, bounded uploads per server, address and key."""

from __future__ import annotations

import collections
import hashlib
from dataclasses import dataclass, field
from typing import ClassVar

from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api.errors import error_response
from service.api.middleware.auth import bearer


@dataclass(eq=False)
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

    EXEMPT_PATHS: ClassVar[frozenset[str]] = frozenset({"/healthz", "/readyz", "/metrics"})

    app: ASGIApp
    max_in_flight: int
    max_uploads: int = 0
    max_uploads_per_ip: int = 0
    max_uploads_per_key: int = 0
    in_flight: int = field(default=0, init=False)
    uploads: int = field(default=0, init=False)
    _per_ip: collections.Counter[str] = field(default_factory=collections.Counter, init=False)
    _per_key: collections.Counter[str] = field(default_factory=collections.Counter, init=False)

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
        key = hashlib.sha256(bearer(scope)).hexdigest()[:16] if bearer(scope) else ""
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
