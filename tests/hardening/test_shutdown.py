"""SIGTERM under load: readiness drops at once, accepted requests finish, exit within the grace."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import httpx

from tests.hardening.test_bad_inputs import geotiff
from tests.service.conftest import LiveServer

CLIENTS = 16
DRAIN_DELAY_S = 1.0
GRACE_S = 10.0


@dataclass
class Outcome:
    """One request: when it was sent and answered, and what it got."""

    sent: float
    done: float
    status: int | None
    error: str | None


def test_sigterm_with_16_clients_sending_loses_no_accepted_request(
    start_server: Callable[..., LiveServer],
) -> None:
    server = start_server(drain_delay_s=str(DRAIN_DELAY_S), shutdown_grace_s=str(GRACE_S))
    image = geotiff(size=192)
    outcomes: list[Outcome] = []
    lock = threading.Lock()
    go = threading.Barrier(CLIENTS + 1)

    def client() -> None:
        with httpx.Client(base_url=server.url, timeout=60) as c:
            go.wait()
            while True:
                sent = time.monotonic()
                try:
                    resp = c.post(
                        "/predict",
                        data={"model": "footprints"},
                        files={"image": ("a.tif", image, "image/tiff")},
                    )
                    status, error = resp.status_code, None
                except httpx.HTTPError as exc:
                    status, error = None, type(exc).__name__
                with lock:
                    outcomes.append(Outcome(sent, time.monotonic(), status, error))
                if status != 200:
                    return

    threads = [threading.Thread(target=client) for _ in range(CLIENTS)]
    for t in threads:
        t.start()
    go.wait()
    time.sleep(2.0)
    server.proc.send_signal(signal.SIGTERM)
    sigterm = time.monotonic()
    ready = httpx.get(f"{server.url}/readyz", timeout=5)
    ready_after = time.monotonic() - sigterm
    code = server.proc.wait(GRACE_S + DRAIN_DELAY_S + 10)
    exited_after = time.monotonic() - sigterm
    for t in threads:
        t.join(30)

    assert ready.status_code == 503
    assert "shutting down" in ready.json()["reasons"]
    assert ready_after < 1.0
    before = [o for o in outcomes if o.sent < sigterm]
    after = [o for o in outcomes if o.sent >= sigterm]
    in_flight = [o for o in before if o.done > sigterm]
    # Every request sent before SIGTERM was accepted and answered in full.
    assert [o for o in before if o.status != 200] == []
    assert len(in_flight) >= 1
    # Requests after it are refused cleanly: 503 while draining, or no connection.
    # New work is refused: 503 while draining, then the socket is closed (a
    # connect or a read on a closing keep-alive connection fails). Never a 200
    # half-done, never a 5xx other than 503.
    refused = ("ConnectError", "RemoteProtocolError", "ReadError")
    assert all(o.status == 503 or o.error in refused for o in after), [
        (o.status, o.error) for o in after
    ]
    assert exited_after < DRAIN_DELAY_S + GRACE_S
    assert code in (0, -signal.SIGTERM)
    print(
        f"shutdown: {len(before)} requests before SIGTERM (all 200, {len(in_flight)} in flight), "
        f"{len(after)} after ({sum(o.status == 503 for o in after)} 503, "
        f"{sum(o.error == 'ConnectError' for o in after)} refused); readyz 503 after "
        f"{ready_after * 1000:.0f} ms; exit after {exited_after:.2f} s, code {code}"
    )
