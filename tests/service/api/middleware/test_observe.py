"""Observe: requests counted by route template and status, security headers on every answer."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from starlette.types import Message, Receive, Scope, Send

from service.api.middleware.observe import Observe
from service.metrics import Metrics


def _call(metrics: Metrics, status: int, route: str | None) -> dict[bytes, bytes]:
    """One request through Observe to an app answering ``status``; the answer's headers."""
    sent: list[Message] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if route is not None:
            scope["route"] = SimpleNamespace(path=route)
            scope["state"]["model"] = "footprints"
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    scope: Scope = {"type": "http", "method": "GET", "path": "/jobs/0123abcd", "headers": []}
    asyncio.run(Observe(app, metrics)(scope, receive, send))
    return dict(sent[0]["headers"])


def test_requests_are_counted_by_route_template_never_by_raw_path() -> None:
    metrics = Metrics()
    _call(metrics, 200, "/jobs/{job_id}")
    _call(metrics, 404, "/jobs/{job_id}")
    _call(metrics, 404, None)
    sample = metrics.registry.get_sample_value
    labels = {"route": "/jobs/{job_id}", "model": "footprints", "status": "200"}
    assert sample("attnserve_requests_total", labels) == 1
    assert sample("attnserve_requests_total", {**labels, "status": "404"}) == 1
    unmatched = {"route": "unmatched", "model": "", "status": "404"}
    assert sample("attnserve_requests_total", unmatched) == 1
    assert sample("attnserve_in_flight_requests") == 0
    timed = {"route": "/jobs/{job_id}", "model": "footprints"}
    assert sample("attnserve_request_duration_seconds_count", timed) == 2


def test_every_answer_carries_the_security_headers() -> None:
    headers = _call(Metrics(), 500, None)
    assert headers[b"x-content-type-options"] == b"nosniff"
    assert headers[b"x-frame-options"] == b"DENY"
    assert headers[b"referrer-policy"] == b"no-referrer"
