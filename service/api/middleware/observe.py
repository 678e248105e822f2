"""Request metrics by route template, model and status, and security headers."""

from __future__ import annotations

import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.metrics import Metrics


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
