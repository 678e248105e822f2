"""Closed-loop load generator: N concurrent clients POST one request over and over.

Run it as its own process so it never shares an interpreter (or a GIL) with the
server or the benchmark driver::

    python -m bench.load --url http://127.0.0.1:8000 --request req.json \\
        --concurrency 16 --duration 10

``req.json`` says what to send: ``{"kind": "multipart", "fields": {...},
"file": "tile.tif"}`` or ``{"kind": "json", "body": "body.json"}``. The result
(one JSON object: counts, throughput, latency percentiles, statuses, and the
generator's own CPU time) goes to stdout.

The client is deliberately lean: each request's bytes are built once, and each
connection speaks plain HTTP/1.1 keep-alive over asyncio streams, reading only
the status line and the body's length. On a machine whose cores the server
shares, every millisecond of client CPU is a millisecond the server does not
get; a full HTTP client library (httpx) costs about 3 ms of CPU per request,
which on 2 cores was a third of the machine at 250 requests/s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from tests.helpers.bodies import multipart

MAX_HEAD = 64 * 1024


class ProtocolError(Exception):
    """The server's answer was not HTTP/1.1 as expected."""


def _body(spec: dict[str, Any]) -> tuple[bytes, str]:
    """The request body and its content type."""
    if spec["kind"] == "multipart":
        return multipart(Path(spec["file"]).read_bytes(), **spec.get("fields", {}))
    return Path(spec["body"]).read_bytes(), "application/json"


def build_request(host: str, spec: dict[str, Any], path: str = "/predict") -> bytes:
    """The whole HTTP/1.1 request, head and body, as sent on every iteration."""
    body, content_type = _body(spec)
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\nAccept: application/json\r\n\r\n"
    )
    return head.encode() + body


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes, bool]:
    """One response: status, body, and whether the server keeps the connection."""
    head = await reader.readuntil(b"\r\n\r\n")  # LimitOverrunError past MAX_HEAD
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1."):
        raise ProtocolError(f"bad status line {lines[0]!r}")
    status = int(parts[1])
    headers = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    keep = headers.get("connection", "").lower() != "close"
    if "chunked" in headers.get("transfer-encoding", "").lower():
        chunks = []
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            chunks.append(await reader.readexactly(size + 2))
            if size == 0:
                break
        return status, b"".join(c[:-2] for c in chunks), keep
    if "content-length" in headers:
        return status, await reader.readexactly(int(headers["content-length"])), keep
    return status, await reader.read(), False


async def drive(
    url: str,
    spec: dict[str, Any],
    concurrency: int,
    duration_s: float,
    min_requests: int,
    samples: bool = False,
) -> dict[str, Any]:
    """Run ``concurrency`` clients until ``duration_s`` passed and ``min_requests`` were sent.

    ``samples`` adds every request's latency (``latencies_ms``), for pooling runs.
    """
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    request = build_request(parts.netloc, spec)
    latencies: list[float] = []
    statuses: Counter[str] = Counter()
    started = 0
    t0 = time.perf_counter()
    deadline = t0 + duration_s

    async def worker() -> None:
        nonlocal started
        conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        try:
            while time.perf_counter() < deadline or started < min_requests:
                started += 1
                t = time.perf_counter()
                try:
                    if conn is None:
                        conn = await asyncio.open_connection(host, port, limit=MAX_HEAD)
                    reader, writer = conn
                    writer.write(request)
                    await writer.drain()
                    code, _, keep = await read_response(reader)
                    status = str(code)
                    if not keep:
                        writer.close()
                        conn = None
                except (
                    OSError,
                    asyncio.IncompleteReadError,
                    asyncio.LimitOverrunError,
                    ValueError,
                    ProtocolError,
                ) as exc:
                    status = type(exc).__name__
                    if conn is not None:
                        conn[1].close()
                    conn = None
                latencies.append(time.perf_counter() - t)
                statuses[status] += 1
        finally:
            if conn is not None:
                conn[1].close()

    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall = time.perf_counter() - t0
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu_s = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    lat = np.array(latencies) * 1000.0
    ok = statuses.get("200", 0)
    result: dict[str, Any] = {
        "concurrency": concurrency,
        "requests": len(latencies),
        "ok": ok,
        "errors": len(latencies) - ok,
        "statuses": dict(statuses),
        "wall_s": round(wall, 3),
        "throughput_rps": round(ok / wall, 3),
        "p50_ms": round(float(np.percentile(lat, 50)), 2),
        "p95_ms": round(float(np.percentile(lat, 95)), 2),
        "p99_ms": round(float(np.percentile(lat, 99)), 2),
        "mean_ms": round(float(lat.mean()), 2),
        "max_ms": round(float(lat.max()), 2),
        "client_cpu_s": round(cpu_s, 3),
    }
    if samples:
        result["latencies_ms"] = [round(float(x), 3) for x in lat]
    return result


def main() -> int:
    """Parse arguments, drive the load, print the result as JSON."""
    parser = argparse.ArgumentParser(prog="python -m bench.load", description=__doc__)
    parser.add_argument("--url", required=True)
    parser.add_argument("--request", type=Path, required=True, help="request spec (JSON)")
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of load")
    parser.add_argument(
        "--min-requests", type=int, default=0, help="send at least this many requests"
    )
    parser.add_argument("--samples", action="store_true", help="every latency in the output")
    args = parser.parse_args()
    spec = json.loads(args.request.read_text())
    result = asyncio.run(
        drive(args.url, spec, args.concurrency, args.duration, args.min_requests, args.samples)
    )
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
