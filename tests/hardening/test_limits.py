"""Admission and connection limits, docs switch and security headers on a live server."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator

import httpx

from tests.service.conftest import LiveServer


def _held_body(release: threading.Event) -> Iterator[bytes]:
    # A JSON body that is slow but within the read timeout: the request stays in flight.
    yield b'{"model": "crops",'
    release.wait(4)
    yield b' "days": [1]}'


def test_concurrency_limit_slow_heads_docs_switch_and_headers(
    start_server: Callable[..., LiveServer],
) -> None:
    server = start_server(
        docs_enabled="false",
        max_concurrent_requests="2",
        body_read_timeout_s="8",
        request_head_timeout_s="1",
    )
    url = server.url

    # Two requests holding the only two slots: the third is refused, probes are not.
    release = threading.Event()
    held: list[int] = []

    def hold() -> None:
        resp = httpx.post(
            f"{url}/predict",
            content=_held_body(release),
            headers={"content-type": "application/json"},
            timeout=30,
        )
        held.append(resp.status_code)

    holders = [threading.Thread(target=hold) for _ in range(2)]
    for t in holders:
        t.start()
    time.sleep(1.0)
    refused = httpx.get(f"{url}/models")
    assert refused.status_code == 503
    assert refused.headers["retry-after"] == "1"
    assert "too many requests in flight" in refused.json()["error"]["message"]
    for path in ("/healthz", "/readyz", "/metrics"):
        assert httpx.get(url + path).status_code == 200, path
    release.set()
    for t in holders:
        t.join()
    assert held == [422, 422]  # answered in full once their bodies came
    assert httpx.get(f"{url}/models").status_code == 200

    # A client that never finishes its request head is disconnected.
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(b"GET /models HTTP/1.1\r\nHost: x\r\n")
        started = time.monotonic()
        assert s.recv(100) == b""
        assert time.monotonic() - started < 5

    # Docs off: no UI and no schema, in the one error shape.
    for path in ("/docs", "/openapi.json", "/redoc"):
        resp = httpx.get(url + path)
        assert resp.status_code == 404
        assert resp.json()["error"]["code"] == "not_found"

    # Security headers on answers and errors alike.
    for resp in (httpx.get(f"{url}/models"), httpx.get(f"{url}/jobs/{'A' * 24}")):
        assert resp.headers["x-content-type-options"] == "nosniff"
        assert resp.headers["x-frame-options"] == "DENY"
        assert resp.headers["referrer-policy"] == "no-referrer"
    missing = httpx.get(f"{url}/jobs/{'A' * 24}")
    assert missing.headers["cache-control"] == "no-store"
    assert set(missing.json()["error"]) >= {"code", "message", "status"}
