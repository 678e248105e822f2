"""``python -m bench.scene_queue``: one scene split into units over 1..N replicas sharing Redis.

Each run starts a fresh redis-server and N servers (``python -m service``) on
one job directory with ``ATTNSERVE_QUEUE_URL`` set, submits the same footprints
scene (``cogeo.tif`` repeated, 3072 x 3072 by default) to the first, and follows
it to the end. From the servers' logs: every unit's seconds and the finishing
step's; from the job: the units each replica did. ``--pin`` gives each replica
one core of its own (``taskset``, one ONNX Runtime thread) so that replicas do
not share cores.

The Amdahl model: a job takes ``t(N) = plan + ceil(units / N) x unit + finish``
on N replicas, from the one-replica run's mean unit time and finishing time;
the page sets it beside each run's measured time, and beside it again with the
mean unit time that run measured (on a shared CPU, units slow down as replicas
compete for cores). Every run's output COGs are compared with the first's
(one replica): the largest absolute difference is reported, and more than
1e-5 fails the benchmark. Writes ``bench/scene_queue.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import httpx

from bench.machine import load_average, machine, report_head
from bench.run import COMMON_ENV, SOURCE, say, server_dirs
from bench.scene_job import follow_job
from tests.helpers.redis_server import RedisServer, redis_binary
from tests.helpers.scenes import tile_scene
from tests.helpers.server import REPO, LiveServer, serve_command

TOOK = re.compile(r": (unit|finish) (-?\d+) took ([\d.]+) s")
JOB_LIMIT_S = 1800.0


def one_run(scene: Path, replicas: int, root: Path, unit_tiles: int, pin: bool) -> dict[str, Any]:
    """The scene on ``replicas`` servers sharing a fresh Redis; its timings."""
    binary = redis_binary()
    if binary is None:
        raise SystemExit("redis-server is not installed (apt-get install redis-server)")
    root.mkdir(parents=True)
    (root / "redis").mkdir()
    redis = RedisServer(root / "redis", binary)
    env = {
        **COMMON_ENV,
        **server_dirs(root / "jobs"),
        "ATTNSERVE_QUEUE_URL": redis.url,
        "ATTNSERVE_QUEUE_UNIT_TILES": str(unit_tiles),
        "ATTNSERVE_LOG_LEVEL": "info",
    }
    if pin:
        env |= {"ATTNSERVE_INTRA_OP_THREADS": "1", "ATTNSERVE_CPU_INSTANCES": "1"}
    servers = []
    try:
        for i in range(replicas):

            def command(port: int, core: int = i) -> list[str]:
                return (
                    ["taskset", "-c", str(core), *serve_command(port)]
                    if pin
                    else serve_command(port)
                )

            servers.append(LiveServer(env, root / f"replica-{i}.log", command=command))
        for server in servers:
            server.wait_ready()
        with httpx.Client(base_url=servers[0].url, timeout=600) as client:
            files = {"image": (scene.name, scene.read_bytes(), "image/tiff")}
            submit = {"data": {"model": "footprints", "async": "true"}, "files": files}
            job, _, seconds = follow_job(client, submit, JOB_LIMIT_S, 0.2)
    finally:
        for server in servers:
            server.stop()
        redis.stop()
    units: list[float] = []
    finish: list[float] = []
    for i in range(replicas):
        for match in TOOK.finditer((root / f"replica-{i}.log").read_text()):
            (finish if match.group(1) == "finish" else units).append(float(match.group(3)))
    return {
        "replicas": replicas,
        "state": job["state"],
        "seconds": round(seconds, 2),
        "units": len(units),
        "unit_s_mean": round(sum(units) / max(1, len(units)), 3),
        "unit_s_sum": round(sum(units), 2),
        "finish_s": round(sum(finish), 2),
        "finish_runs": len(finish),
        "workers": sorted(job.get("workers", {}).values(), reverse=True),
        "tiles": (job.get("tiling") or {}).get("tiles"),
        "job_id": job["job_id"],
    }


def outputs(jobs: Path, job_id: str) -> dict[str, Path]:
    """A done job's output COGs in a job directory, by name."""
    folder = jobs / job_id[:2] / job_id
    return {p.name: p for p in sorted(folder.glob("*.tif")) if not p.name.startswith("input")}


def max_difference(first: Path, second: Path, rows: int = 1024) -> float:
    """The largest absolute difference between two rasters of one grid (NaN where both are)."""
    import numpy as np
    import rasterio
    from rasterio.windows import Window

    worst = 0.0
    with rasterio.open(first) as a, rasterio.open(second) as b:
        if (a.width, a.height, a.count) != (b.width, b.height, b.count):
            return math.inf
        for top in range(0, a.height, rows):
            window = Window(0, top, a.width, min(rows, a.height - top))
            x = a.read(window=window).astype(np.float64)
            y = b.read(window=window).astype(np.float64)
            if not np.array_equal(np.isnan(x), np.isnan(y)):
                return math.inf
            both = ~np.isnan(x)
            if both.any():
                worst = max(worst, float(np.abs(x[both] - y[both]).max()))
    return worst


def model(runs: list[dict[str, Any]]) -> None:
    """Add each run's Amdahl estimate: from the one-replica run, and from its own unit times."""
    base = runs[0]
    plan = max(0.0, base["seconds"] - base["unit_s_sum"] - base["finish_s"])
    base["plan_s"] = round(plan, 2)
    for run in runs:
        rounds = math.ceil(run["units"] / run["replicas"])
        run["model_s"] = round(plan + rounds * base["unit_s_mean"] + base["finish_s"], 2)
        run["model_own_units_s"] = round(plan + rounds * run["unit_s_mean"] + run["finish_s"], 2)
        serial = plan + base["finish_s"]
        run["serial_share"] = round(serial / (serial + base["unit_s_sum"]), 3)


def page(results: dict[str, Any]) -> str:
    """The results as Markdown."""
    lines = report_head(
        "One scene over replicas sharing a Redis queue",
        results["machine"],
        f"`python -m bench.scene_queue` (`{' '.join(results['argv'])}`): a "
        f"{results['size']} x {results['size']} footprints scene job, units of "
        f"{results['unit_tiles']} tiles; load average before: {results['load_before']}, "
        f"after: {results.get('load_after', 'not recorded')}.",
    )
    lines += [
        "",
        "| replicas | units (per replica) | unit s (mean) | finishing s | job s | "
        "Amdahl from 1 replica | with this run's unit time | outputs vs 1 replica |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for run in results["runs"]:
        lines.append(
            f"| {run['replicas']} | {run['units']} ({', '.join(map(str, run['workers']))}) | "
            f"{run['unit_s_mean']} | {run['finish_s']} | {run['seconds']} | {run['model_s']} | "
            f"{run['model_own_units_s']} | max abs difference {run['max_difference']:.2g} |"
        )
    base = results["runs"][0]
    lines += [
        "",
        f"Serial share (planning and finishing) of the one-replica job: "
        f"{base['serial_share']:.0%}; the most N replicas can speed it up is "
        f"{1 / base['serial_share']:.1f}x.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the scene on each replica count and write the results."""
    parser = argparse.ArgumentParser(prog="python -m bench.scene_queue", description=__doc__)
    parser.add_argument("--size", type=int, default=3072, help="scene side in pixels")
    parser.add_argument("--replicas", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--unit-tiles", type=int, default=8)
    parser.add_argument("--pin", action="store_true", help="one core per replica")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "scene_queue")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="attnserve-queue-") as tmp:
        root = Path(tmp)
        repeat = max(1, math.ceil(args.size / 1024))
        scene = tile_scene(SOURCE, repeat, root / "scene-full.tif")
        if repeat * 1024 != args.size:
            scene = _crop(scene, args.size, root / "scene.tif")
        load_before = load_average()
        runs = []
        for n in args.replicas:
            say(f"{n} replica(s)")
            run = one_run(scene, n, root / f"n{n}", args.unit_tiles, args.pin)
            mine = outputs(root / f"n{n}" / "jobs", run.pop("job_id"))
            if not runs:
                reference = {name: root / f"reference-{name}" for name in mine}
                for name, path in mine.items():
                    shutil.move(path, reference[name])
                mine = reference
            # Each output against the first run's (one replica, as a single process runs it).
            run["max_difference"] = max(
                (max_difference(reference[name], path) for name, path in mine.items()),
                default=math.inf,
            )
            if set(mine) != set(reference):
                run["max_difference"] = math.inf
            runs.append(run)
            say(json.dumps(run))
            shutil.rmtree(root / f"n{n}" / "jobs", ignore_errors=True)
    model(runs)
    results = {
        "argv": sys.argv[1:] if argv is None else argv,
        "machine": machine(),
        "size": args.size,
        "unit_tiles": args.unit_tiles,
        "load_before": load_before,
        "load_after": load_average(),
        "runs": runs,
    }
    args.out.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(page(results))
    same = all(r["max_difference"] <= 1e-5 for r in runs)
    return 0 if same and all(r["state"] == "done" for r in runs) else 1


def _crop(scene: Path, size: int, out: Path) -> Path:
    """The top-left ``size`` x ``size`` of ``scene``."""
    import rasterio
    from rasterio.windows import Window

    with rasterio.open(scene) as src:
        profile = src.profile | {"width": size, "height": size}
        window = Window(0, 0, size, size)
        with rasterio.open(out, "w", **profile) as dst:
            dst.write(src.read(window=window))
            dst.transform = src.window_transform(window)
    return out


if __name__ == "__main__":
    raise SystemExit(main())
