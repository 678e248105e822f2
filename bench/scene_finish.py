"""Finishing a scene's COGs: before and after they were written while the rows come.

``python -m bench.scene_finish [--repeats 4,8] [--before REF] [--after REF] [--out DIR]`` writes
``cogeo.tif`` repeated ``r x r`` (deflate, 512-px blocks) for each ``r`` and runs it
as an async footprints scene job on a fresh server from the server code of
commit ``--before`` (before), then on one from this checkout or commit
``--after`` (after), back to back (``--after-first``: the other way round).
Per job: the tiling phase (from running until ``/metrics`` counts every tile
inferred), finishing (from then until done), the whole job (the server's own
seconds), the server's CPU seconds, its peak memory, the COG checks; the two
jobs' outputs compared (largest difference at full resolution and per overview).
Then the profile: the before job's outputs written again in this process, block
row by block row, once from a partial file (GDAL's overviews, then its COG
driver) and once streamed, with each step's seconds per file.

Writes ``scene_finish.json`` and ``scene_finish.md`` to ``--out`` (``bench/``).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import rasterio
from rasterio.windows import Window
from rio_cogeo.cogeo import cog_validate

from bench.machine import load_average, machine, report_head
from bench.run import COMMON_ENV, SOURCE, say, server_dirs
from bench.scene_compression import checkout, cpu_seconds
from bench.scene_job import session_counters
from service.raster.cog import RasterSink
from service.raster.georef import Georeference
from service.runtime.cpus import usable_cpus
from tests.helpers.scenes import tile_scene
from tests.helpers.server import REPO, LiveServer

ENV = {"ATTNSERVE_MAX_UPLOAD_MB": "2048"}
# Rows read at a time where outputs are compared or written again.
ROWS = 512


def follow(server: LiveServer, scene: Path, limit_s: float = 3600) -> dict[str, Any]:
    """Submit ``scene`` as a footprints job and time its phases until it is done."""
    with httpx.Client(base_url=server.url, timeout=600) as client:
        cpu_before = cpu_seconds(server.pid)
        resp = client.post(
            "/predict",
            data={"model": "footprints", "async": "true"},
            files={"image": ("scene.tif", scene.read_bytes(), "image/tiff")},
        )
        if resp.status_code != 202:
            raise RuntimeError(f"scene job refused: {resp.status_code} {resp.text[:300]}")
        job_id = resp.json()["job_id"]
        t_running = t_tiled = None
        rows_at_start: float = 0.0
        total = 0
        started = time.perf_counter()
        while True:
            job = client.get(f"/jobs/{job_id}").json()
            now = time.perf_counter()
            total = int(job.get("progress", {}).get("total", 0)) or total
            if job["state"] == "running" and t_running is None:
                t_running = now
                rows_at_start = session_counters(client).get("rows", 0.0)
            # Every tile inferred: what is left is blending the last rows and finishing.
            if (
                t_running is not None
                and t_tiled is None
                and total
                and session_counters(client).get("rows", 0.0) - rows_at_start >= total
            ):
                t_tiled = now
            if job["state"] in ("done", "failed", "cancelled"):
                break
            if now - started > limit_s:
                raise RuntimeError(f"scene job still {job['state']} after {limit_s:g} s")
            time.sleep(0.2)
        t_done = time.perf_counter()
        cpu = cpu_seconds(server.pid) - cpu_before
    if job["state"] != "done":
        raise RuntimeError(f"scene job ended {job['state']}: {job.get('error')}")
    t_running = t_running or started
    t_tiled = t_tiled or t_done
    return {
        "job_id": job_id,
        "tiles": total,
        "tiling_s": round(t_tiled - t_running, 2),
        "finish_s": round(t_done - t_tiled, 2),
        "job_s": round(t_done - t_running, 2),
        "server_cpu_s": round(cpu, 1),
        "vm_hwm_mib": round((server.hwm_kib() or 0) / 1024, 1),
    }


def one_job(scene: Path, work: Path, label: str, cwd: Path) -> dict[str, Any]:
    """``scene`` on a fresh server run from ``cwd``; the job's timings and its outputs."""
    jobs = work / f"jobs-{label}"
    env = {**COMMON_ENV, **ENV, **server_dirs(jobs), "ATTNSERVE_LOG_LEVEL": "info"}
    load_before = load_average()
    log = work / f"server-{label}.log"
    with LiveServer(env, log, cwd=cwd) as server:
        out = follow(server, scene)
    folder = jobs / out["job_id"][:2] / out["job_id"]
    meta = json.loads((folder / "meta.json").read_text())
    out["server_job_s"] = meta["seconds"]
    out["outputs"] = {}
    for name in sorted({la["file"] for la in meta["layers"] if la.get("storage") == "cog"}):
        valid, errors, _ = cog_validate(str(folder / name), quiet=True)
        out["outputs"][name] = {
            "cog_valid": bool(valid),
            "errors": errors,
            "mib": round((folder / name).stat().st_size / 2**20, 1),
        }
    out["finished"] = [ln.split("service.raster.cog: ")[1] for ln in finished_lines(log)]
    out["load_average_before"] = load_before
    out["load_average_after"] = load_average()
    out["folder"] = str(folder)
    say(
        f"  [{label}] tiling {out['tiling_s']} s, finishing {out['finish_s']} s, job "
        f"{out['job_s']} s, server CPU {out['server_cpu_s']} s, load {out['load_average_after']}"
    )
    return out


def finished_lines(log: Path) -> list[str]:
    """The server's lines on each finished output (this checkout's code logs them)."""
    return [ln.strip() for ln in log.read_text().splitlines() if "service.raster.cog: " in ln]


def _largest_difference(x: np.ndarray, y: np.ndarray) -> float:
    if not np.array_equal(np.isnan(x), np.isnan(y)):
        return float("inf")
    return float(np.nanmax(np.abs(x - y))) if x.size else 0.0


def compare(before: Path, after: Path) -> dict[str, Any]:
    """Georeference and overviews the same; full resolution's and each overview's largest
    difference (NaN where NaN, else infinite)."""
    with rasterio.open(before) as a, rasterio.open(after) as b:
        same = (a.crs, a.transform, a.overviews(1)) == (b.crs, b.transform, b.overviews(1))
        full = 0.0
        for top in range(0, a.height, ROWS):
            window = Window(0, top, a.width, min(ROWS, a.height - top))
            full = max(full, _largest_difference(a.read(window=window), b.read(window=window)))
        levels = len(a.overviews(1))
    diffs = []
    for level in range(levels):
        with (
            rasterio.open(before, overview_level=level) as a,
            rasterio.open(after, overview_level=level) as b,
        ):
            diffs.append(_largest_difference(a.read(), b.read()))
    return {"georeference_same": same, "full_resolution_max_diff": full, "overview_max_diff": diffs}


def replay(cog: Path, work: Path, stream: bool) -> tuple[Path, dict[str, Any]]:
    """Write ``cog``'s full resolution again, block row by block row, and finish it."""
    with rasterio.open(cog) as ds:
        georef = Georeference(ds.crs.to_wkt(), tuple(ds.transform)[:6], ds.width, ds.height)
        out = work / f"{'streamed' if stream else 'partial'}-{cog.name}"
        sink = RasterSink(out, georef, list(ds.descriptions), stream=stream)
        cpu = time.process_time()
        for top in range(0, ds.height, ROWS):
            window = Window(0, top, ds.width, min(ROWS, ds.height - top))
            sink.write(top, ds.read(window=window, masked=True).filled(np.nan))
    write_cpu = time.process_time() - cpu
    cpu = time.process_time()
    sink.finish()
    finish_cpu = time.process_time() - cpu
    result = {
        "streamed": sink.streamed,
        **{f"{k}_s": round(v, 2) for k, v in sink.seconds.items()},
        "write_cpu_s": round(write_cpu, 2),
        "finish_cpu_s": round(finish_cpu, 2),
        "mib": round(out.stat().st_size / 2**20, 1),
        "cog_valid": bool(cog_validate(str(out), quiet=True)[0]),
    }
    return out, result


def one_scene(
    repeat: int, work: Path, before: Path, after: Path, after_first: bool = False
) -> dict[str, Any]:
    """Before and after jobs of one scene, their outputs compared, the finishing profiled."""
    side = 1024 * repeat
    scene = tile_scene(SOURCE, repeat, work / f"scene-{side}.tif", "deflate")
    order = [("before", before), ("after", after)]
    ran = {
        code: one_job(scene, work, f"{side}-{code}", cwd)
        for code, cwd in order[:: -1 if after_first else 1]
    }
    jobs = {"before": ran["before"], "after": ran["after"]}
    scene.unlink()
    b, a = Path(jobs["before"].pop("folder")), Path(jobs["after"].pop("folder"))
    names = sorted(jobs["before"]["outputs"])
    out: dict[str, Any] = {"side": side, "jobs": jobs, "compared": {}, "profile": {}}
    for name in names:
        # The jobs' outputs may differ in the last bits (batches of other tiles);
        # the same values written both ways must not.
        partial, from_partial = replay(b / name, work, stream=False)
        streamed, from_stream = replay(b / name, work, stream=True)
        out["compared"][name] = {
            "jobs": compare(b / name, a / name),
            "same_values_both_ways": compare(partial, streamed),
        }
        out["profile"][name] = {"partial_file": from_partial, "streamed": from_stream}
        partial.unlink()
        streamed.unlink()
        say(f"  [{side}] {name}: {out['compared'][name]} {out['profile'][name]}")
    return out


def sizes(outputs: dict[str, dict[str, Any]]) -> str:
    """Each output's name and MiB."""
    return ", ".join(f"{name} {o['mib']}" for name, o in outputs.items())


def markdown(results: dict[str, Any]) -> str:
    """The results as a Markdown page."""
    lines = report_head(
        "Finishing scene COGs while the tiles come",
        results["machine"],
        f"`python -m bench.scene_finish` with {results['cpus']} CPUs usable, "
        f"{results['started']}, git {results['machine'].get('attnserve_git')}; before: the "
        f"server code of {results['before']}, after: of "
        f"{results.get('after', 'this checkout')}. Scenes: `cogeo.tif` repeated r x r (RGB uint8, "
        "deflate), the shipped footprints model, default settings (deflate level 1 COGs, "
        "float32 outputs: `prediction.tif` one band, `attention.tif` four), one fresh server "
        f"per job, {'after then before' if results.get('after_first') else 'before then after'} "
        "back to back.",
        "The machine's 2 cores may be shared with other work (model training, tests) while "
        "this runs; the load average says how busy they were: at start "
        f"{results['load_average_start']}, at end "
        f"{results['load_average_end']}. Wall seconds move with it; server CPU seconds hardly.",
    )
    lines += [
        "## Scene jobs",
        "",
        "Tiling: from running until every tile was inferred (`/metrics`); finishing: from "
        "then until done (the last rows' blending included).",
        "",
        "| side | code | tiles | tiling s | finishing s | whole job s | finishing share "
        "| server CPU s | VmHWM MiB | COGs valid | MiB per output | load after |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- | --- |",
    ]
    for s in results["scenes"]:
        for code, j in s["jobs"].items():
            outs = j["outputs"]
            lines.append(
                f"| {s['side']} | {code} | {j['tiles']} | {j['tiling_s']} | {j['finish_s']} | "
                f"{j['job_s']} | {j['finish_s'] / max(j['job_s'], 1e-9):.1%} | "
                f"{j['server_cpu_s']} | {j['vm_hwm_mib']} | "
                f"{all(o['cog_valid'] for o in outs.values())} | "
                f"{sizes(outs)} | "
                f"{j['load_average_after']} |"
            )
    lines += [
        "",
        "## Outputs compared",
        "",
        "The before and after jobs' outputs, and the same values (the before job's) written "
        "from a partial file and streamed: largest absolute difference at full resolution "
        "and in each overview (inf: nodata differs).",
        "",
        "| side | file | compared | georeference and overviews same | full resolution "
        "| overviews |",
        "| ---: | --- | --- | --- | ---: | --- |",
    ]
    for s in results["scenes"]:
        for name, pair in s["compared"].items():
            for what, c in pair.items():
                lines.append(
                    f"| {s['side']} | {name} | {what.replace('_', ' ')} | "
                    f"{c['georeference_same']} | {c['full_resolution_max_diff']} | "
                    f"{c['overview_max_diff']} |"
                )
    lines += [
        "",
        "## Where finishing goes",
        "",
        "The before job's outputs written again in one process, block row by block row (wall "
        "seconds of each step; CPU seconds of this process, the overview child's not counted).",
        "",
        "| side | file | path | write s | overviews s | COG copy s | assemble s | write CPU s "
        "| finish CPU s | MiB | COG valid |",
        "| ---: | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for s in results["scenes"]:
        for name, p in s["profile"].items():
            for path, r in p.items():
                lines.append(
                    f"| {s['side']} | {name} | {path} | {r.get('write_s', '-')} | "
                    f"{r.get('overviews_s', '-')} | {r.get('cog_s', '-')} | "
                    f"{r.get('assemble_s', '-')} | {r['write_cpu_s']} | {r['finish_cpu_s']} | "
                    f"{r['mib']} | {r['cog_valid']} |"
                )
    return "\n".join([*lines, ""])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", default="4,8", help="cogeo.tif repeats a side, in order")
    parser.add_argument("--before", default="HEAD", help="commit whose server code runs first")
    parser.add_argument(
        "--after", help="commit whose server code runs second (default: this checkout's files)"
    )
    parser.add_argument("--after-first", action="store_true", help="run the after job first")
    parser.add_argument("--out", type=Path, default=REPO / "bench")
    parser.add_argument(
        "--report", type=Path, help="rewrite the page of this JSON, running nothing"
    )
    args = parser.parse_args()
    if args.report:
        results = json.loads(args.report.read_text())
        args.report.with_suffix(".md").write_text(markdown(results))
        return 0
    results: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine(),
        "cpus": usable_cpus(),
        "load_average_start": load_average(),
        "after_first": args.after_first,
        "scenes": [],
    }
    with tempfile.TemporaryDirectory(prefix="attnserve-finish-") as tmp:
        work = Path(tmp)
        results["before"] = checkout(args.before, work / "before")
        after = REPO
        if args.after:
            results["after"] = checkout(args.after, work / "after")
            after = work / "after"
        for repeat in (int(r) for r in args.repeats.split(",")):
            say(f"scene {1024 * repeat} x {1024 * repeat}")
            scene = one_scene(repeat, work, work / "before", after, args.after_first)
            results["scenes"].append(scene)
            # Written after each scene: a later scene cut short keeps the earlier ones.
            results["load_average_end"] = load_average()
            args.out.mkdir(parents=True, exist_ok=True)
            (args.out / "scene_finish.json").write_text(json.dumps(results, indent=2) + "\n")
            (args.out / "scene_finish.md").write_text(markdown(results))
    say(f"wrote {args.out / 'scene_finish.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
