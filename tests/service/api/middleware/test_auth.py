"""ApiKeyAuth: Bearer keys on guarded paths, open probes and viewer pages, owner tags."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from starlette.types import Message, Receive, Scope, Send

from service.api.middleware.auth import ApiKeyAuth, bearer
from service.jobs.record import owner_of

KEY = "k" * 24


def _scope(path: str, authorization: bytes | None = None) -> Scope:
    headers = [(b"authorization", authorization)] if authorization is not None else []
    return {"type": "http", "method": "GET", "path": path, "headers": headers}


def _call(scope: Scope) -> tuple[int, dict[str, Any], dict[str, str], Scope | None]:
    """Run one request through ApiKeyAuth; status, JSON body, headers, the scope the app saw."""
    seen: list[Scope] = []
    sent: list[Message] = []

    async def app(inner: Scope, receive: Receive, send: Send) -> None:
        seen.append(inner)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    asyncio.run(ApiKeyAuth(app, [KEY])(scope, receive, send))
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    headers = {k.decode(): v.decode() for k, v in start.get("headers", [])}
    return start["status"], json.loads(body), headers, seen[0] if seen else None


@pytest.mark.parametrize(
    "authorization", [None, b"Bearer wrong-key-wrong-key", b"Basic " + KEY.encode()]
)
def test_a_guarded_path_without_a_valid_key_is_401(authorization: bytes | None) -> None:
    status, body, headers, seen = _call(_scope("/predict/footprints", authorization))
    assert status == 401
    assert body["error"]["code"] == "unauthorized"
    assert headers["www-authenticate"] == "Bearer"
    assert seen is None


def test_a_valid_key_passes_with_its_owner_tag() -> None:
    status, _, _, seen = _call(_scope("/jobs/abc", b"Bearer " + KEY.encode()))
    assert status == 200
    assert seen is not None
    assert seen["state"]["owner"] == owner_of(KEY)


@pytest.mark.parametrize(
    ("path", "open_"),
    [
        ("/healthz", True),
        ("/metrics", True),
        ("/viewer", True),
        ("/viewer/static/app.js", True),
        ("/viewer/abc123", True),
        ("/viewer/jobs/abc123/layers/x.png", False),
        ("/viewer/static/../secret", False),
        ("/viewer/static/vendor/leaflet/images/layers.png", True),
        ("/viewer/static/vendor/../../jobs/x", False),
        ("/viewer/static/a/b/c/d/e.js", False),
    ],
)
def test_probes_and_viewer_pages_are_open_and_data_is_guarded(path: str, open_: bool) -> None:
    status, _, _, _ = _call(_scope(path))
    assert status == (200 if open_ else 401)


def test_bearer_reads_the_token_of_a_bearer_header_only() -> None:
    assert bearer(_scope("/", b"bearer  abc ")) == b"abc"
    assert bearer(_scope("/", b"Basic abc")) == b""
    assert bearer(_scope("/")) == b""
