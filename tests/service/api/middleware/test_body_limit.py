"""BodyLimit's minimum body rate, driven with ASGI messages as a server sends them."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from starlette.types import Message, Receive, Scope, Send

from service.api.middleware.body_limit import BodyLimit

SCOPE: Scope = {
    "type": "http",
    "method": "POST",
    "path": "/predict",
    "raw_path": b"/predict",
    "query_string": b"",
    "headers": [(b"content-type", b"application/json"), (b"transfer-encoding", b"chunked")],
}


async def _reads_body(scope: Scope, receive: Receive, send: Send, delay_s: float = 0.0) -> None:
    """An app that (after ``delay_s``) reads its whole body, then answers 200."""
    await asyncio.sleep(delay_s)
    size = 0
    while True:
        message = await receive()
        size += len(message.get("body", b""))
        if not message.get("more_body", False):
            break
    body = json.dumps({"size": size}).encode()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})


def _run(chunks: list[tuple[float, bytes]], delay_s: float = 0.0) -> tuple[int, Any, float]:
    """Feed ``(gap before, bytes)`` chunks through BodyLimit; returns status, body, seconds."""
    sent: list[Message] = []

    async def main() -> float:
        queue: asyncio.Queue[Message] = asyncio.Queue()

        async def client() -> None:
            for i, (gap, data) in enumerate(chunks):
                await asyncio.sleep(gap)
                more = i < len(chunks) - 1
                await queue.put({"type": "http.request", "body": data, "more_body": more})

        async def app(scope: Scope, receive: Receive, send: Send) -> None:
            await _reads_body(scope, receive, send, delay_s)

        async def send(message: Message) -> None:
            sent.append(message)

        feeder = asyncio.ensure_future(client())
        limit = BodyLimit(
            app, max_bytes=2**20, read_timeout_s=30, min_rate_bps=100, rate_window_s=0.5
        )
        began = time.monotonic()
        await limit(SCOPE, queue.get, send)
        feeder.cancel()
        return time.monotonic() - began

    took = asyncio.run(main())
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return status, json.loads(body), took


def test_a_trickling_body_gets_408_after_the_grace_window() -> None:
    # One byte every 0.1 s: 10 bytes/s, never a gap long enough for the stall timeout.
    status, body, took = _run([(0.1, b" ")] * 40)
    assert status == 408
    assert body["error"]["message"] == (
        "the request body is arriving too slowly: under 100 bytes/s over 0.5 s"
    )
    assert 0.5 <= took < 1.5


def test_a_silent_client_is_judged_at_the_window_end_without_a_byte() -> None:
    status, _, took = _run([(0.0, b"{"), (5.0, b"}")])
    assert status == 408
    assert took < 1.5


def test_a_body_at_a_good_rate_passes_for_many_windows() -> None:
    status, body, _ = _run([(0.1, b"x" * 30)] * 20)  # 300 bytes/s for 2 s
    assert status == 200
    assert body == {"size": 600}


def test_a_handler_that_reads_late_does_not_make_its_client_slow() -> None:
    # The whole body is there at once; the handler starts reading after 1 s.
    status, body, _ = _run([(0.0, b"x" * 10), (0.0, b"y" * 10)], delay_s=1.0)
    assert status == 200
    assert body == {"size": 20}
