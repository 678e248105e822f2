"""Admission and connection limits, docs switch and security headers on a live server."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.helpers.server import LiveServer


def _trickle(gap_s: float, stop: threading.Event) -> Iterator[bytes]:
    """A valid JSON body, one padding byte every ``gap_s``, until ``stop`` or 30 s."""
    yield b'{"model": "crops",'
    deadline = time.monotonic() + 30
    while not stop.is_set() and time.monotonic() < deadline:
        time.sleep(gap_s)
        yield b" "
    yield b' "days": [1]}'


def test_trickling_bodies_take_no_request_slot_are_capped_per_client_and_cut_off(
    start_server: Callable[..., LiveServer], shared_data: Path, tmp_path: Path
) -> None:
    server = start_server(
        max_concurrent_requests="1",
        max_uploads_per_ip="2",
        body_min_rate_bps="50",
        body_rate_window_s="2",
        body_read_timeout_s="8",
    )
    url = server.url
    stop = threading.Event()
    trickled: list[tuple[int, str, float]] = []

    def trickle() -> None:
        began = time.monotonic()
        resp = httpx.post(
            f"{url}/predict",
            content=_trickle(0.5, stop),
            headers={"content-type": "application/json"},
            timeout=30,
        )
        trickled.append((resp.status_code, resp.text, time.monotonic() - began))

    tricklers = [threading.Thread(target=trickle) for _ in range(2)]
    for t in tricklers:
        t.start()
    time.sleep(0.7)
    # The address's two upload places are taken: a third upload waits its turn (429)...
    third = httpx.post(f"{url}/predict", json={"model": "crops", "days": [1]})
    assert third.status_code == 429, third.text
    assert "request bodies arriving (limit 2)" in third.json()["error"]["message"]
    # ...but the trickling bodies hold none of the one request slot, and probes answer.
    assert httpx.get(f"{url}/models").status_code == 200
    for path in ("/healthz", "/readyz", "/metrics"):
        assert httpx.get(url + path).status_code == 200, path
    for t in tricklers:
        t.join()
    stop.set()
    # Under 50 bytes/s once the 2 s grace window is over: 408, well before 30 s.
    for status, text, took in trickled:
        assert status == 408, text
        assert "arriving too slowly" in text
        assert took < 6
    assert httpx.post(f"{url}/predict", json={"model": "crops", "days": [1]}).status_code == 422

    # A request being processed holds the one slot: others get 503, probes do not.
    # A 1024 x 1024 image runs synchronously for long enough to be seen; a larger
    # one would become a scene job and hold the slot only while it is checked.
    scene = shared_data / "cogeo.tif"
    answer: list[int] = []
    predict = threading.Thread(
        target=lambda: answer.append(
            httpx.post(
                f"{url}/predict",
                data={"model": "footprints"},
                files={"image": ("scene.tif", scene.read_bytes(), "image/tiff")},
                timeout=120,
            ).status_code
        )
    )
    predict.start()
    refused = None
    while predict.is_alive() and refused is None:
        resp = httpx.get(f"{url}/models")
        if resp.status_code == 503:
            refused = resp
        time.sleep(0.05)
    assert refused is not None, "no request was refused while the prediction ran"
    assert refused.headers["retry-after"] == "1"
    assert "too many requests in flight" in refused.json()["error"]["message"]
    assert httpx.get(f"{url}/healthz").status_code == 200
    predict.join()
    assert answer[0] in (200, 202)  # answered, or made a job (by the memory budget)
    assert httpx.get(f"{url}/models").status_code == 200


def test_slow_heads_docs_switch_and_headers(
    start_server: Callable[..., LiveServer],
) -> None:
    server = start_server(docs_enabled="false", request_head_timeout_s="1")
    url = server.url

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


def _trickler(port: int, stop: threading.Event, statuses: list[bytes]) -> None:
    """A client that sends a valid head, then one body byte every 5 s; reconnects when cut."""
    head = (
        b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 100000\r\n\r\n"
    )
    while not stop.is_set():
        with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
            s.sendall(head)
            s.settimeout(5)
            while not stop.is_set():
                try:
                    s.sendall(b" ")
                    answer = s.recv(64)
                except TimeoutError:
                    continue  # nothing said: trickle on
                except OSError:
                    answer = b""
                statuses.append(answer[9:12] if answer else b"closed")
                break


@pytest.mark.slow
def test_64_trickling_clients_leave_8_normal_clients_served(
    start_server: Callable[..., LiveServer],
) -> None:
    server = start_server()
    stop = threading.Event()
    cut: list[bytes] = []
    tricklers = [
        threading.Thread(target=_trickler, args=(server.port, stop, cut), daemon=True)
        for _ in range(64)
    ]
    for t in tricklers:
        t.start()
    time.sleep(2)
    latencies: list[float] = []
    statuses: list[int] = []
    health: list[float] = []
    body = {
        "model": "crops",
        "days": [10, 40, 70],
        "parcels": [{"id": "p", "series": [[1000.0] * 10] * 3}],
    }

    def normal() -> None:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            deadline = time.monotonic() + 40
            while time.monotonic() < deadline:
                began = time.monotonic()
                statuses.append(client.post("/predict", json=body).status_code)
                latencies.append(time.monotonic() - began)
                time.sleep(0.2)

    def probe() -> None:
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline:
            began = time.monotonic()
            assert httpx.get(f"{server.url}/healthz", timeout=5).status_code == 200
            health.append(time.monotonic() - began)
            time.sleep(0.25)

    workers = [threading.Thread(target=normal) for _ in range(8)]
    workers.append(threading.Thread(target=probe))
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    stop.set()
    assert set(statuses) == {200}, sorted(set(statuses))
    assert float(np.percentile(latencies, 99)) < 5
    assert max(health) < 1
    # Under 1 KiB/s once the 10 s grace window is over, every trickler was cut off.
    assert cut
    assert set(cut) <= {b"408", b"closed"}
