"""A bounded soak: mixed valid and hostile load against a live server for a set time.

Run it as its own process, so the load generator never shares an interpreter
(or a GIL) with the server::

    python bench/soak/soak.py --duration 600 --out bench/soak/results

Without ``--url`` it starts ``python -m service`` itself (model repository from
``--model-dir``, ``ATTNSERVE_TEST_MODEL_DIR`` or the shipped models). Every few
seconds it samples the server's resident memory from ``/proc/<pid>/status``.
Every request kind has the statuses it may get; anything else is counted as
unexpected. Results go to ``<out>.json`` and ``<out>.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
from rasterio.transform import from_origin

REPO = Path(__file__).resolve().parents[2]
# Run by path, the script sees its own folder only; the shared test helpers are at the root.
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.report import status_table  # noqa: E402
from tests.helpers.bodies import chunked_upload  # noqa: E402
from tests.helpers.geotiff import geotiff as build_geotiff  # noqa: E402
from tests.helpers.geotiff import noise  # noqa: E402
from tests.helpers.server import LiveServer, settings_env  # noqa: E402

# Small enough that the oversize case is cheap to send, large enough for every valid case.
UPLOAD_LIMIT_MB = 2
# Jobs expire and are cleaned up during the run (the soak reads only recent ones), so
# the number of stored jobs levels off after JOB_TTL_S + JOB_CLEANUP_S; memory that
# follows the job count (allocator pools, file mappings) levels off with it.
JOB_TTL_S = 120
JOB_CLEANUP_S = 30


@dataclass(frozen=True)
class Case:
    """One kind of request: how to send it and which statuses are right."""

    name: str
    weight: int
    expected: frozenset[int]
    send: Callable[[httpx.Client, random.Random], httpx.Response]


def geotiff(rng: random.Random, bands: int, size: int, dtype: str = "uint8") -> bytes:
    """A georeferenced GeoTIFF of random values, ``(bands, size, size)``."""
    data = noise(bands, size, dtype, high=255, seed=rng.getrandbits(32))
    return build_geotiff(data, transform=from_origin(500000, 4000000, 10, 10))


def build_cases(models: dict[str, dict[str, object]]) -> list[Case]:
    """The request mix for the models the server has."""
    cases: list[Case] = []
    seg = next((n for n, m in models.items() if m["task"] == "segmentation"), None)
    tem = next((n for n, m in models.items() if m["task"] == "temporal_classification"), None)
    jobs: list[str] = []
    lock = threading.Lock()

    def remember(resp: httpx.Response) -> httpx.Response:
        if resp.status_code == 200 and resp.headers.get("content-type", "").startswith("app"):
            with lock:
                jobs.append(resp.json()["job_id"])
                del jobs[:-200]
        return resp

    def multipart(c: httpx.Client, model: str, data: bytes, **fields: str) -> httpx.Response:
        files = {"image": ("scene.tif", data, "image/tiff")}
        return c.post("/predict", data={"model": model, **fields}, files=files)

    if seg is not None:
        nbands = len(models[seg]["bands"])  # type: ignore[arg-type]
        cases += [
            Case(
                "segment_geotiff",
                6,
                frozenset({200}),
                lambda c, r: remember(multipart(c, seg, geotiff(r, nbands, r.choice([32, 64])))),
            ),
            Case(
                "segment_as_geotiff",
                1,
                frozenset({200}),
                lambda c, r: multipart(c, seg, geotiff(r, nbands, 32), format="geotiff"),
            ),
            Case(
                "wrong_band_count",
                1,
                frozenset({422}),
                lambda c, r: multipart(c, seg, geotiff(r, nbands + 2, 16)),
            ),
            Case(
                "truncated_geotiff",
                1,
                frozenset({422}),
                lambda c, r: multipart(c, seg, geotiff(r, nbands, 64)[:600]),
            ),
            Case(
                "png_named_tif",
                1,
                frozenset({422}),
                lambda c, r: multipart(c, seg, b"\x89PNG\r\n\x1a\n" + os.urandom(200)),
            ),
            Case(
                "oversize_chunked",
                1,
                frozenset({413}),
                lambda c, r: c.post(
                    "/predict",
                    content=chunked_upload(seg, 2 * UPLOAD_LIMIT_MB * 2**20, "soak"),
                    headers={"content-type": "multipart/form-data; boundary=soak"},
                ),
            ),
        ]
    if tem is not None:
        tbands = len(models[tem]["bands"])  # type: ignore[arg-type]

        def parcels(r: random.Random, n: int, dates: int) -> dict[str, object]:
            return {
                "model": tem,
                "days": sorted(r.sample(range(1, 365), dates)),
                "parcels": [
                    {
                        "id": f"p{i}",
                        "series": [
                            [r.uniform(0, 8000) for _ in range(tbands)] for _ in range(dates)
                        ],
                    }
                    for i in range(n)
                ],
            }

        cases += [
            Case(
                "classify_parcels",
                6,
                frozenset({200}),
                lambda c, r: remember(c.post("/predict", json=parcels(r, r.randint(1, 20), 8))),
            ),
            Case(
                "parcels_with_nan",
                1,
                frozenset({422}),
                lambda c, r: c.post(
                    "/predict",
                    content=json.dumps(parcels(r, 1, 3)).replace("]]", ", NaN]]", 1),
                    headers={"content-type": "application/json"},
                ),
            ),
        ]
    cases += [
        Case(
            "read_job",
            3,
            frozenset({200}),
            lambda c, r: c.get(f"/jobs/{r.choice(jobs)}") if jobs else c.get("/healthz"),
        ),
        Case(
            "read_attention",
            2,
            frozenset({200}),
            lambda c, r: c.get(f"/attention/{r.choice(jobs)}") if jobs else c.get("/healthz"),
        ),
        Case("unknown_job", 1, frozenset({404}), lambda c, r: c.get("/jobs/" + "A" * 24)),
        Case("traversal_job", 1, frozenset({404}), lambda c, r: c.get("/jobs/..%2f..%2fetc")),
        Case(
            "unknown_model",
            1,
            frozenset({404}),
            lambda c, r: c.post(
                "/predict",
                json={"model": "nope", "days": [1], "parcels": [{"series": [[1.0]]}]},
            ),
        ),
        Case(
            "deep_json",
            1,
            frozenset({422}),
            lambda c, r: c.post(
                "/predict",
                content=b"[" * 5000 + b"]" * 5000,
                headers={"content-type": "application/json"},
            ),
        ),
        Case(
            "wrong_content_type",
            1,
            frozenset({415}),
            lambda c, r: c.post(
                "/predict", content=b"model=x", headers={"content-type": "text/plain"}
            ),
        ),
        Case("models", 1, frozenset({200}), lambda c, r: c.get("/models")),
        Case("metrics", 1, frozenset({200}), lambda c, r: c.get("/metrics")),
    ]
    return cases


def rss_mb(pid: int) -> float:
    """Resident memory of ``pid`` in MiB, from ``/proc``."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def slope_mb_per_hour(samples: list[tuple[float, float]]) -> float:
    """Least-squares slope of RSS over time, in MiB per hour."""
    if len(samples) < 3:
        return 0.0
    t = np.array([s[0] for s in samples])
    m = np.array([s[1] for s in samples])
    return float(np.polyfit(t, m, 1)[0] * 3600)


def machine() -> dict[str, object]:
    """What the soak ran on."""
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(mem_gb, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def start_server(model_dir: Path, job_dir: Path, log: Path) -> LiveServer:
    """``python -m service`` with the soak's limits on a free port, ready."""
    settings = {
        "max_upload_mb": str(UPLOAD_LIMIT_MB),
        "job_ttl_s": str(JOB_TTL_S),
        "job_cleanup_interval_s": str(JOB_CLEANUP_S),
    }
    env = {"ATTNSERVE_MODEL_DIR": str(model_dir), "ATTNSERVE_JOB_DIR": str(job_dir)}
    server = LiveServer({**env, **settings_env(**settings)}, log)
    server.wait_ready()
    return server


def soak(
    url: str,
    pid: int,
    duration_s: float,
    workers: int,
    sample_s: float,
    seed: int,
    warmup_s: float,
) -> dict:
    """Drive the load for ``duration_s``; returns the figures.

    The RSS slope is taken after ``warmup_s`` (at least the first tenth): arenas,
    caches and the job store's population must reach their steady state first.
    """
    models = {m["name"]: m for m in httpx.get(url + "/models", timeout=10).json()["models"]}
    cases = build_cases(models)
    weights = [c.weight for c in cases]
    statuses: dict[str, Counter[int]] = defaultdict(Counter)
    unexpected: list[dict[str, object]] = []
    latencies: list[float] = []
    lock = threading.Lock()
    stop = time.monotonic() + duration_s

    def worker(index: int) -> None:
        rng = random.Random(seed + index)
        with httpx.Client(base_url=url, timeout=120) as client:
            while time.monotonic() < stop:
                case = rng.choices(cases, weights)[0]
                started = time.monotonic()
                try:
                    status = case.send(client, rng).status_code
                except httpx.HTTPError as exc:
                    status = -1
                    detail = type(exc).__name__
                else:
                    detail = ""
                took = time.monotonic() - started
                with lock:
                    statuses[case.name][status] += 1
                    latencies.append(took)
                    if status not in case.expected:
                        unexpected.append({"case": case.name, "status": status, "error": detail})

    samples: list[tuple[float, float]] = []
    t0 = time.monotonic()
    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(workers)]
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        samples.append((time.monotonic() - t0, rss_mb(pid)))
        time.sleep(sample_s)
    samples.append((time.monotonic() - t0, rss_mb(pid)))
    elapsed = time.monotonic() - t0
    # (A run shorter than twice the warm-up keeps its second half for the slope.)
    warmup = min(max(warmup_s, elapsed * 0.1), elapsed / 2)
    steady = [s for s in samples if s[0] >= warmup]
    second_half = [s for s in samples if s[0] >= elapsed / 2]
    last_third = [s for s in samples if s[0] >= elapsed * 2 / 3]
    lat = np.array(latencies) if latencies else np.zeros(1)
    total = sum(sum(c.values()) for c in statuses.values())
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
        ).stdout.strip()
    except OSError:
        commit = "unknown"
    return {
        "machine": machine(),
        "commit": commit or "unknown",
        "duration_s": round(elapsed, 1),
        "workers": workers,
        "models": sorted(models),
        "requests": total,
        "requests_per_s": round(total / elapsed, 2),
        "unexpected": len(unexpected),
        "unexpected_examples": unexpected[:20],
        "statuses": {k: {str(s): n for s, n in sorted(v.items())} for k, v in statuses.items()},
        "expected": {c.name: sorted(c.expected) for c in cases},
        "latency_s": {
            "p50": round(float(np.percentile(lat, 50)), 4),
            "p99": round(float(np.percentile(lat, 99)), 4),
            "max": round(float(lat.max()), 4),
        },
        "rss_mb": {
            "start": round(samples[0][1], 1),
            "after_warmup": round(steady[0][1], 1) if steady else None,
            "end": round(samples[-1][1], 1),
            "max": round(max(s[1] for s in samples), 1),
            "warmup_s": round(warmup, 1),
            "slope_mb_per_hour": round(slope_mb_per_hour(steady), 2),
            "slope_second_half_mb_per_hour": round(slope_mb_per_hour(second_half), 2),
            "slope_last_third_mb_per_hour": round(slope_mb_per_hour(last_third), 2),
            "samples": [[round(t, 1), round(m, 1)] for t, m in samples],
        },
    }


def markdown(r: dict) -> str:
    """The figures as a markdown report."""
    m = r["machine"]
    rss = r["rss_mb"]
    lines = [
        "# Soak results",
        "",
        f"Machine: {m['cores']}-core CPU ({m['cpu']}), {m['memory_gib']} GiB RAM, "
        f"Python {m['python']}, {m['platform']}; no GPU (ONNX Runtime CPU).",
        "",
        f"- duration: {r['duration_s']} s, {r['workers']} concurrent clients, models "
        f"{', '.join(r['models'])}" + (f" ({r['model_note']})" if r.get("model_note") else ""),
        f"- code: commit {r.get('commit', 'unknown')}",
        f"- requests: {r['requests']} ({r['requests_per_s']}/s)",
        f"- **unexpected statuses: {r['unexpected']}**",
        f"- latency: p50 {r['latency_s']['p50']} s, p99 {r['latency_s']['p99']} s, "
        f"max {r['latency_s']['max']} s",
        f"- server RSS: start {rss['start']} MiB, after warm-up {rss['after_warmup']} MiB, "
        f"end {rss['end']} MiB, max {rss['max']} MiB; "
        f"slope after warm-up ({rss.get('warmup_s', '10%')} s) "
        f"**{rss['slope_mb_per_hour']} MiB/h**, over the second half "
        f"{rss.get('slope_second_half_mb_per_hour', 'n/a')} MiB/h, over the last third "
        f"{rss.get('slope_last_third_mb_per_hour', 'n/a')} MiB/h",
        "",
        *status_table(r),
    ]
    if r["unexpected_examples"]:
        lines += ["", "Unexpected (first 20):", ""]
        lines += [f"- {u}" for u in r["unexpected_examples"]]
    return "\n".join(lines) + "\n"


def main() -> int:
    """Parse arguments, run the soak, write the results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=600.0, help="seconds of load")
    parser.add_argument("--workers", type=int, default=4, help="concurrent clients")
    parser.add_argument("--sample", type=float, default=5.0, help="seconds between RSS samples")
    parser.add_argument("--url", help="a running server (then --pid is needed)")
    parser.add_argument("--pid", type=int, help="the running server's process id")
    parser.add_argument("--model-dir", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=Path("bench/soak/results"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--warmup",
        type=float,
        default=JOB_TTL_S + 2 * JOB_CLEANUP_S + 30,
        help="seconds before the RSS slope is taken (default: until the job count is steady)",
    )
    args = parser.parse_args()

    server = None
    tmp = tempfile.TemporaryDirectory(prefix="attnserve-soak-")
    try:
        if args.url:
            if args.pid is None:
                parser.error("--url needs --pid (to sample the server's memory)")
            url, pid = args.url.rstrip("/"), args.pid
        else:
            model_dir = args.model_dir or Path(
                os.environ.get("ATTNSERVE_TEST_MODEL_DIR", REPO / "models" / "shipped")
            )
            server = start_server(model_dir, Path(tmp.name) / "jobs", Path(tmp.name) / "log")
            url, pid = server.url, server.pid
        result = soak(url, pid, args.duration, args.workers, args.sample, args.seed, args.warmup)
    finally:
        if server is not None:
            server.stop()
        tmp.cleanup()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    args.out.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))
    return 0 if result["unexpected"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
