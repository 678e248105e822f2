"""The benchmark suite: the raw ONNX Runtime limit, the server over HTTP, the scene path.

``python -m bench.run`` measures, in one run on one machine and for both shipped
models:

1. raw session latency and throughput per batch size (the physical limit);
2. a live server over HTTP (uvicorn subprocess), load from a separate process,
   at several concurrencies, with batching on and off;
3. a large scene as an async job, against raw throughput on the same tiles,
   with the server's peak memory and checks of its COG outputs.

Results go to ``bench/results.json`` and ``bench/results.md``. ``--quick`` runs
a small version in about a minute (CI smoke); ``--profile LABEL`` writes py-spy
profiles of the request path to ``bench/profiles/`` instead.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench import raw
from bench.machine import load_average, machine
from bench.report import checks, markdown
from service.app import session_options
from service.config import SHIPPED_MODELS, Settings
from service.runtime.cpus import usable_cpus
from service.runtime.segmentation import context_px
from service.runtime.session import ModelSession
from tests.helpers.bodies import parcels
from tests.helpers.geotiff import window_geotiff
from tests.helpers.scenes import tile_scene
from tests.helpers.server import LiveServer

REPO = Path(__file__).resolve().parents[1]
SOURCE = REPO.parent / "shared" / "data" / "geotiff" / "cogeo.tif"
PARCELS, DATES = 10, 24
# Sessions of the side-by-side raw reference (the server's default CPU instances).
INSTANCES = 2


@dataclass(frozen=True)
class Plan:
    """How much to measure."""

    fp_batches: tuple[int, ...]
    fp_server_batches: tuple[int, ...]
    crop_batches: tuple[int, ...]
    raw_min_s: float
    raw_min_runs: int
    concurrency: tuple[int, ...]
    fp_duration_s: float
    crop_duration_s: float
    rounds: int
    extra_concurrency: tuple[int, ...]
    scene_variants: tuple[tuple[str, dict[str, str]], ...]
    scene_repeat: int
    scene_raw_tiles: int


FULL = Plan(
    fp_batches=(1, 2, 4, 8, 16, 32),
    fp_server_batches=(1, 2, 4, 8),
    crop_batches=(1, 2, 4, 8, 16, 32),
    raw_min_s=3.0,
    raw_min_runs=3,
    concurrency=(1, 4, 16, 64),
    fp_duration_s=20.0,
    crop_duration_s=10.0,
    rounds=2,
    extra_concurrency=(1, 4, 16),
    # The default image batch (4) only: on CPU a batch of 8 bought no throughput and
    # held 2.4 GB at peak (bench results of 910f510).
    scene_variants=(("defaults", {}),),
    scene_repeat=8,
    scene_raw_tiles=16,
)
QUICK = Plan(
    fp_batches=(1, 2),
    fp_server_batches=(1,),
    crop_batches=(1, 4),
    raw_min_s=0.2,
    raw_min_runs=1,
    concurrency=(1, 4),
    fp_duration_s=1.0,
    crop_duration_s=1.0,
    rounds=1,
    extra_concurrency=(1,),
    scene_variants=(("defaults", {}),),
    scene_repeat=1,
    scene_raw_tiles=2,
)

# Settings every benchmark server gets; named in the results. The long timeout
# lets footprints at concurrency 64 (tens of seconds of queue on 2 CPU cores)
# measure queueing rather than 504s.
COMMON_ENV = {"ATTNSERVE_REQUEST_TIMEOUT_S": "300"}
BATCHING_OFF = {
    "ATTNSERVE_BATCHING__MAX_BATCH_SIZE": "1",
    "ATTNSERVE_BATCHING__MAX_QUEUE_DELAY_MS": "0",
    "ATTNSERVE_SERIES_BATCHING__MAX_BATCH_SIZE": str(PARCELS),
    "ATTNSERVE_SERIES_BATCHING__MAX_QUEUE_DELAY_MS": "0",
}


def server_dirs(job_dir: Path) -> dict[str, str]:
    """The shipped models, and a job store of the benchmark's own."""
    return {"ATTNSERVE_MODEL_DIR": str(SHIPPED_MODELS), "ATTNSERVE_JOB_DIR": str(job_dir)}


def say(text: str) -> None:
    """Progress, as the benchmark runs."""
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


def footprints_tile(path: Path, size: int = 512) -> bytes:
    """A ``size`` x ``size`` window of real imagery as a deflate GeoTIFF upload."""
    tile, _ = window_geotiff(
        SOURCE, size, compress="deflate", tiled=True, blockxsize=256, blockysize=256
    )
    path.write_bytes(tile)
    return tile


def crops_body(path: Path, seed: int = 0) -> None:
    """A JSON request of ``PARCELS`` parcels x ``DATES`` dates of 10 bands."""
    rng = np.random.default_rng(seed)
    days = np.sort(rng.choice(np.arange(60, 300), DATES, replace=False))
    start = np.datetime64("2024-01-01")
    dates = [str(start + int(d)) for d in days]
    rows = [
        (np.round(rng.uniform(200, 6000, (DATES, 10))), rng.random(DATES) > 0.15)
        for _ in range(PARCELS)
    ]
    series, valid = np.stack([s for s, _ in rows]), np.stack([v for _, v in rows])
    path.write_text(json.dumps(parcels(series, valid, dates=dates)))


def request_specs(work: Path) -> dict[str, Path]:
    """Request specs for the load generator, one per model."""
    tile = work / "tile512.tif"
    footprints_tile(tile)
    body = work / "crops.json"
    crops_body(body)
    specs = {
        "footprints": {"kind": "multipart", "fields": {"model": "footprints"}, "file": str(tile)},
        "crops": {"kind": "json", "body": str(body)},
    }
    paths = {}
    for name, spec in specs.items():
        paths[name] = work / f"{name}.request.json"
        paths[name].write_text(json.dumps(spec))
    return paths


def run_load(
    server: LiveServer,
    spec: Path,
    concurrency: int,
    duration_s: float,
    min_requests: int,
    samples: bool = False,
) -> dict[str, Any]:
    """Drive the server from a separate process (``bench.load``); ``samples``: every latency."""
    out = subprocess.run(
        [sys.executable, "-m", "bench.load", "--url", server.url, "--request", str(spec),
         "--concurrency", str(concurrency), "--duration", str(duration_s),
         "--min-requests", str(min_requests), *(["--samples"] if samples else [])],
        capture_output=True, text=True, cwd=REPO, check=True,
    )  # fmt: skip
    return dict(json.loads(out.stdout))


def bench_raw(plan: Plan) -> dict[str, Any]:
    """Raw session latency and throughput per batch size for both models."""
    options = session_options(Settings())
    result: dict[str, Any] = {
        "session_options": {k: v for k, v in dataclasses.asdict(options).items() if k != "cuda"}
    }
    fp = ModelSession(SHIPPED_MODELS / "footprints-2.2.0.onnx", options)
    tile = fp.manifest.input.tile_size or 512
    server_side = raw.server_input_side(fp.manifest, tile)
    halo_side = tile + 2 * context_px(fp.manifest)
    result["footprints"] = {
        "tile": tile, "server_input": server_side, "scene_input": halo_side, "by_side": {},
    }  # fmt: skip
    sides = [(tile, plan.fp_batches)]
    if halo_side != tile:
        # Scene tiles (and, where the task adds context, whole images) run this size.
        sides.append((halo_side, plan.fp_server_batches))
    say(f"  a {tile} px upload runs as a {server_side} px input; scene tiles as {halo_side} px")
    for side, batches in sides:
        rows = []
        images = raw.source_tiles(SOURCE, side, max(batches))
        for b in batches:
            r = raw.measure(
                fp, raw.image_feed(fp.manifest, images[:b]), 1, plan.raw_min_s, plan.raw_min_runs
            )
            say(
                f"  raw footprints {side}px batch {b}: {r['latency_p50_ms']:.0f} ms, "
                f"{r['throughput_per_s']:.2f} tiles/s"
            )
            rows.append(r)
        result["footprints"]["by_side"][str(side)] = rows
    cr = ModelSession(SHIPPED_MODELS / "crops-1.0.0.onnx", options)
    rows = []
    for b in plan.crop_batches:
        feed = raw.series_feed(cr.manifest, b, PARCELS, DATES)
        r = raw.measure(cr, feed, PARCELS, plan.raw_min_s, max(plan.raw_min_runs, 20))
        say(
            f"  raw crops batch {b} ({b * PARCELS} series x {DATES} dates): "
            f"{r['latency_p50_ms']:.2f} ms, {r['throughput_per_s']:.0f} requests/s"
        )
        rows.append(r)
    result["crops"] = {"parcels": PARCELS, "dates": DATES, "batches": rows}
    return result


class RawReference:
    """Bare sessions of both models in this process, timed again between server levels."""

    def __init__(self, plan: Plan) -> None:
        options = session_options(Settings())
        self.plan = plan
        self.sessions = {
            "footprints": ModelSession(SHIPPED_MODELS / "footprints-2.2.0.onnx", options),
            "crops": ModelSession(SHIPPED_MODELS / "crops-1.0.0.onnx", options),
        }
        # Two sessions with half the cores each, run side by side: the limit
        # for a server with 2 CPU instances (its default on 2 or more cores).
        half = dataclasses.replace(options, intra_op_threads=max(1, usable_cpus() // INSTANCES))
        self.instances = [
            ModelSession(SHIPPED_MODELS / "footprints-2.2.0.onnx", half) for _ in range(INSTANCES)
        ]
        fp = self.sessions["footprints"].manifest
        side = raw.server_input_side(fp, fp.input.tile_size or 512)
        images = raw.source_tiles(SOURCE, side, 4)
        crops = self.sessions["crops"].manifest
        self.feeds = {
            "footprints": {b: raw.image_feed(fp, images[:b]) for b in (1, 4)},
            "crops": {b: raw.series_feed(crops, b, PARCELS, DATES) for b in (1, 16)},
        }

    def measure(self, model: str) -> dict[str, Any]:
        """Batch-1 latency and the better throughput of a small and a larger batch, now."""
        per_item = PARCELS if model == "crops" else 1
        seconds = self.plan.raw_min_s / 2 if model == "footprints" else 0.5
        out: dict[str, Any] = {}
        for b, feed in self.feeds[model].items():
            out[f"batch_{b}"] = raw.measure(self.sessions[model], feed, per_item, seconds, 3)
        out["best_per_s"] = max(v["throughput_per_s"] for v in out.values())
        if model == "footprints":
            out["side_by_side"] = raw.measure_side_by_side(
                self.instances, self.feeds[model][1], per_item, seconds
            )
        return out


def bench_http(plan: Plan, work: Path, specs: dict[str, Path]) -> dict[str, Any]:
    """Both models over HTTP, batching on and off, at each concurrency.

    A third server, batching on with the job store writing behind (fsync still
    on), shows what waiting for job writes costs (at fewer concurrencies); a
    fourth runs every batch on one session (the default runs batches side by
    side on CPU instances while requests queue).

    The machine is shared, so its speed drifts: right before each level, with
    the server idle, a bare session in this process is timed again on the same
    input (``raw_now``), and the targets compare against that.
    """
    result: dict[str, Any] = {}
    references = RawReference(plan)
    modes: list[tuple[str, dict[str, str], tuple[int, ...]]] = [
        ("on", {}, plan.concurrency),
        ("off", BATCHING_OFF, plan.concurrency),
        ("on, write-behind", {"ATTNSERVE_JOB_WRITE_BEHIND": "true"}, plan.extra_concurrency),
        ("on, 1 CPU instance", {"ATTNSERVE_CPU_INSTANCES": "1"}, plan.extra_concurrency),
    ]
    for i, (mode, extra, levels) in enumerate(modes):
        env = {
            **COMMON_ENV,
            **extra,
            "ATTNSERVE_MODEL_DIR": str(SHIPPED_MODELS),
            "ATTNSERVE_JOB_DIR": str(work / f"jobs-{i}"),
        }
        with LiveServer(env, work / f"server-{i}.log") as server:
            for model, duration in (
                ("footprints", plan.fp_duration_s),
                ("crops", plan.crop_duration_s),
            ):
                run_load(server, specs[model], 2, 0, 4)  # warm the path
                rows = []
                for c in levels:
                    raw_now = references.measure(model)
                    r = run_load(server, specs[model], c, duration, plan.rounds * c)
                    r["raw_now"] = raw_now
                    r["server_rss_mib"] = round((server.rss_kib() or 0) / 1024, 1)
                    say(
                        f"  http {model} batching {mode} c={c}: {r['throughput_rps']:.2f} req/s, "
                        f"p50 {r['p50_ms']:.1f} ms, p99 {r['p99_ms']:.1f} ms, "
                        f"errors {r['errors']}; raw just before: batch 1 "
                        f"{raw_now['batch_1']['latency_p50_ms']:.1f} ms, best "
                        f"{raw_now['best_per_s']:.2f}/s"
                    )
                    rows.append(r)
                result.setdefault(model, {})[mode] = rows
            result.setdefault("server", {})[mode] = {
                "settings": {k: v for k, v in env.items() if "DIR" not in k},
                "vm_hwm_mib": round((server.hwm_kib() or 0) / 1024, 1),
            }
    return result


def settings_with(env: dict[str, str]) -> Settings:
    """The server's settings as a server started with ``env`` would read them."""
    saved = dict(os.environ)
    try:
        os.environ.update(env)
        return Settings()
    finally:
        os.environ.clear()
        os.environ.update(saved)


def bench_scene(plan: Plan, work: Path) -> dict[str, Any]:
    """A large scene as an async job, against raw on the same tiles, per settings variant."""
    from bench.scene_job import raw_on_tiles, run_scene_job

    scene = tile_scene(SOURCE, plan.scene_repeat, work / "scene.tif")
    result: dict[str, Any] = {}
    for i, (variant, extra) in enumerate(plan.scene_variants):
        env = {**COMMON_ENV, **extra, **server_dirs(work / f"jobs-scene-{i}")}
        settings = settings_with(env)
        batch = settings.batching.max_batch_size
        fp = ModelSession(SHIPPED_MODELS / "footprints-2.2.0.onnx", session_options(settings))
        say(f"  [{variant}] raw on the scene's tiles (batch {batch})")
        raw_tiles = raw_on_tiles(fp, scene, batch, plan.scene_raw_tiles, plan.raw_min_s)
        del fp
        say(f"  raw: {raw_tiles['tiles_per_s']:.2f} tiles/s on {raw_tiles['input_side']} px")
        with LiveServer(env, work / f"server-scene-{i}.log") as server:
            job = run_scene_job(server, scene, work / f"jobs-scene-{i}", log=say)
        say(
            f"  [{variant}] scene job: {job['tiles']} tiles in {job['server_job_s']:.1f} s "
            f"(tiling {job['tiles_per_s_tiling']:.2f} tiles/s, whole job "
            f"{job['tiles_per_s_job']:.2f} tiles/s), peak RSS {job['vm_hwm_mib']:.0f} MiB"
        )
        result[variant] = {
            "raw": raw_tiles,
            "job": job,
            "settings": {k: v for k, v in env.items() if "DIR" not in k},
        }
    return result


def run(plan: Plan, quick: bool, out_dir: Path | None) -> dict[str, Any]:
    """Every measurement; writes the results files when ``out_dir`` is given."""
    with tempfile.TemporaryDirectory(prefix="attnserve-bench-") as tmp:
        work = Path(tmp)
        results: dict[str, Any] = {
            "quick": quick,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "machine": machine(),
            "load_average_start": load_average(),
            "plan": plan.__dict__,
        }
        say(f"machine: {results['machine']['cpu']}, load {results['load_average_start']}")
        say("raw ONNX Runtime sessions")
        results["raw"] = bench_raw(plan)
        say("server over HTTP")
        results["http"] = bench_http(plan, work, request_specs(work))
        say("scene job")
        results["scene"] = bench_scene(plan, work)
        results["load_average_end"] = load_average()
    results["checks"] = checks(results)
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
        (out_dir / "results.md").write_text(markdown(results))
        say(f"wrote {out_dir / 'results.md'} and {out_dir / 'results.json'}")
    for check in results["checks"]:
        say(f"{'PASS' if check['ok'] else 'MISS'} {check['name']}: {check['detail']}")
    return results


def profile(label: str, out_dir: Path, requests: dict[str, int]) -> None:
    """py-spy profiles of the footprints and crops request paths, as text summaries."""
    from bench.profile import profile_load, summarise

    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="attnserve-profile-") as tmp:
        work = Path(tmp)
        specs = request_specs(work)
        env = {
            **COMMON_ENV,
            "ATTNSERVE_MODEL_DIR": str(SHIPPED_MODELS),
            "ATTNSERVE_JOB_DIR": str(work / "jobs"),
        }
        with LiveServer(env, work / "server.log") as server:
            for model, n in requests.items():
                run_load(server, specs[model], 1, 0, 4)
                raw_file = work / f"{model}.raw"
                load = profile_load(server, specs[model], raw_file, n)
                title = (
                    f"{model} /predict request path, {label}: {n} requests at concurrency 1, "
                    f"p50 {load['p50_ms']} ms, {load['throughput_rps']} req/s, "
                    f"load average {load_average()}, git {machine()['attnserve_git']}"
                )
                text = summarise(raw_file, title)
                (out_dir / f"{model}-{label}.txt").write_text(text)
                say(f"wrote {out_dir / f'{model}-{label}.txt'}")
                print(text)


def main() -> int:
    """Parse arguments and run the benchmark (or the profiles)."""
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a small run for CI (about a minute)")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="results directory (default: bench/, none in --quick)",
    )
    parser.add_argument("--profile", metavar="LABEL", help="write request-path profiles instead")
    args = parser.parse_args()
    if args.profile:
        profile(args.profile, REPO / "bench" / "profiles", {"footprints": 30, "crops": 600})
        return 0
    out = args.out if args.out is not None else (None if args.quick else REPO / "bench")
    run(QUICK if args.quick else FULL, args.quick, out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
