"""Closed-loop load generator: N concurrent clients POST one request over and over.

Run it as its own process so it never shares an interpreter (or a GIL) with the
server or the benchmark driver::

    python -m bench.load --url http://127.0.0.1:8000 --request req.json \\
        --concurrency 16 --duration 10

``req.json`` says what to send: ``{"kind": "multipart", "fields": {...},
"file": "tile.tif"}`` or ``{"kind": "json", "body": "body.json"}``. The result
(one JSON object: counts, throughput, latency percentiles, statuses) goes to
stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import numpy as np


def _request_kwargs(spec: dict[str, Any]) -> dict[str, Any]:
    if spec["kind"] == "multipart":
        data = Path(spec["file"]).read_bytes()
        return {
            "data": spec.get("fields", {}),
            "files": {"image": ("tile.tif", data, "image/tiff")},
        }
    body = Path(spec["body"]).read_bytes()
    return {"content": body, "headers": {"content-type": "application/json"}}


async def drive(
    url: str, spec: dict[str, Any], concurrency: int, duration_s: float, min_requests: int
) -> dict[str, Any]:
    """Run ``concurrency`` clients until ``duration_s`` passed and ``min_requests`` were sent."""
    kwargs = _request_kwargs(spec)
    latencies: list[float] = []
    statuses: Counter[str] = Counter()
    started = 0
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    timeout = httpx.Timeout(300.0)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=timeout) as client:
        t0 = time.perf_counter()
        deadline = t0 + duration_s

        async def worker() -> None:
            nonlocal started
            while time.perf_counter() < deadline or started < min_requests:
                started += 1
                t = time.perf_counter()
                try:
                    response = await client.post("/predict", **kwargs)
                    status = str(response.status_code)
                    await response.aread()
                except httpx.HTTPError as exc:
                    status = type(exc).__name__
                latencies.append(time.perf_counter() - t)
                statuses[status] += 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    lat = np.array(latencies) * 1000.0
    ok = statuses.get("200", 0)
    return {
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
    }


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
    args = parser.parse_args()
    spec = json.loads(args.request.read_text())
    result = asyncio.run(drive(args.url, spec, args.concurrency, args.duration, args.min_requests))
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
