"""attnserve's crops model at 16 clients, batching on and off, in the peers run.

Measured after the peers, on the same machine minutes later: a server with the
default batching, then one with batching off (``bench.run.BATCHING_OFF``), each
loaded with the JSON request of ``bench.run`` (10 parcels x 24 dates) for
``seconds``. Targets: batching on at least as fast as off; p99 under 100 ms.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bench.machine import load_average
from bench.run import BATCHING_OFF, COMMON_ENV, DATES, PARCELS, crops_body, run_load, say
from service.config import SHIPPED_MODELS
from tests.helpers.server import LiveServer

CLIENTS = 16
P99_MS = 100.0


def measure(work: Path, seconds: float, rounds: int = 2) -> dict[str, Any]:
    """Rows for batching on and off at ``CLIENTS`` clients, and their checks."""
    body = work / "crops.json"
    crops_body(body)
    spec = work / "crops.request.json"
    spec.write_text(json.dumps({"kind": "json", "body": str(body)}))
    rows: dict[str, Any] = {}
    for mode, extra in (("on", {}), ("off", BATCHING_OFF)):
        env = {**COMMON_ENV, **extra, "ATTNSERVE_MODEL_DIR": str(SHIPPED_MODELS)}
        env["ATTNSERVE_JOB_DIR"] = str(work / f"jobs-crops-{mode}")
        with LiveServer(env, work / f"crops-{mode}.log") as server:
            run_load(server, spec, 2, 0, 8)  # warm the path
            load_now = load_average()
            r = run_load(server, spec, CLIENTS, seconds, rounds * CLIENTS)
        r["load_average"] = load_now
        r["settings"] = {k: v for k, v in env.items() if "DIR" not in k}
        rows[mode] = r
        say(
            f"  crops batching {mode} c={CLIENTS}: {r['throughput_rps']:.0f} req/s, "
            f"p99 {r['p99_ms']:.1f} ms, errors {r['errors']}"
        )
    return {"clients": CLIENTS, "parcels": PARCELS, "dates": DATES, "rows": rows,
            "checks": checks(rows)}  # fmt: skip


def checks(rows: dict[str, Any]) -> list[dict[str, Any]]:
    """Batching on >= off at ``CLIENTS`` clients; p99 under ``P99_MS`` with batching on."""
    on, off = rows["on"], rows["off"]
    ratio = on["throughput_rps"] / max(off["throughput_rps"], 1e-9)
    return [
        {
            "name": f"crops batching on >= off at {CLIENTS} clients",
            "ok": ratio >= 1.0,
            "value": round(ratio, 3),
            "detail": f"on {on['throughput_rps']:.0f} req/s vs off "
            f"{off['throughput_rps']:.0f} req/s = {ratio:.2f}x",
        },
        {
            "name": f"crops p99 < {P99_MS:g} ms at {CLIENTS} clients (batching on)",
            "ok": on["p99_ms"] < P99_MS,
            "value": on["p99_ms"],
            "detail": f"p99 {on['p99_ms']:.1f} ms (off: {off['p99_ms']:.1f} ms)",
        },
    ]
