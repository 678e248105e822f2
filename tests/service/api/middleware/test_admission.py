"""Admission: 503 while draining or full, upload places per server, address and key."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace
from typing import Any

from starlette.types import Message, Receive, Scope, Send

from service.api.middleware.admission import Admission


def _scope(
    path: str = "/predict/footprints",
    ip: str = "10.0.0.1",
    body: bool = False,
    key: bytes | None = None,
    draining: bool = False,
) -> Scope:
    headers = [(b"content-length", b"10")] if body else []
    if key is not None:
        headers.append((b"authorization", b"Bearer " + key))
    state = SimpleNamespace(attnserve=SimpleNamespace(draining=draining))
    return {
        "type": "http",
        "method": "POST",
        "path": path,
        "headers": headers,
        "client": (ip, 1234),
        "app": SimpleNamespace(state=state),
    }


class Held:
    """An app that holds each request until released, reading its body first if asked."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.entered = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.entered += 1
        await self.release.wait()
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})


async def _request(admission: Admission, scope: Scope, body_parts: int = 1) -> tuple[int, Any]:
    """Send one request; a body arrives in ``body_parts`` messages, each on request."""
    sent: list[Message] = []
    parts = iter(range(body_parts))

    async def receive() -> Message:
        i = next(parts, body_parts - 1)
        return {"type": "http.request", "body": b"x", "more_body": i < body_parts - 1}

    async def send(message: Message) -> None:
        sent.append(message)

    await admission(scope, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], json.loads(body)


def test_a_draining_server_refuses_new_work_but_answers_probes() -> None:
    async def main() -> None:
        app = Held()
        app.release.set()
        admission = Admission(app, max_in_flight=4)
        status, body = await _request(admission, _scope(draining=True))
        assert status == 503
        assert body["error"]["code"] == "not_ready"
        status, _ = await _request(admission, _scope("/readyz", draining=True))
        assert status == 200

    asyncio.run(main())


def test_requests_past_the_in_flight_limit_get_503_until_one_ends() -> None:
    async def main() -> None:
        app = Held()
        admission = Admission(app, max_in_flight=1)
        first = asyncio.ensure_future(_request(admission, _scope()))
        while app.entered == 0:
            await asyncio.sleep(0.001)
        status, body = await _request(admission, _scope())
        assert status == 503
        assert body["error"]["code"] == "overloaded"
        app.release.set()
        assert (await first)[0] == 200
        assert admission.in_flight == 0
        assert (await _request(admission, _scope()))[0] == 200

    asyncio.run(main())


def test_bodies_still_arriving_hold_an_upload_place_per_address_not_a_request_slot() -> None:
    async def main() -> None:
        app = Held()
        admission = Admission(app, max_in_flight=1, max_uploads=8, max_uploads_per_ip=1)
        # The app has not read this body yet: it holds an upload place.
        first = asyncio.ensure_future(_request(admission, _scope(body=True)))
        while app.entered == 0:
            await asyncio.sleep(0.001)
        assert admission.uploads == 1
        assert admission.in_flight == 0
        status, body = await _request(admission, _scope(body=True))
        assert status == 429
        assert body["error"]["code"] == "too_many_requests"
        app.release.set()
        # Another address gets its own place (and the request slot once the first ends).
        assert (await _request(admission, _scope(ip="10.0.0.2", body=True)))[0] == 200
        assert (await first)[0] == 200
        assert admission.uploads == 0
        assert admission.in_flight == 0

    asyncio.run(main())


def test_uploads_per_api_key_are_bounded_across_addresses() -> None:
    async def main() -> None:
        app = Held()
        admission = Admission(app, max_in_flight=8, max_uploads_per_key=1)
        first = asyncio.ensure_future(_request(admission, _scope(body=True, key=b"a" * 20)))
        while app.entered == 0:
            await asyncio.sleep(0.001)
        other_ip = _scope(ip="10.0.0.9", body=True, key=b"a" * 20)
        status, body = await _request(admission, other_ip)
        assert status == 429
        assert "API key" in body["error"]["message"]
        app.release.set()
        assert (await first)[0] == 200

    asyncio.run(main())
