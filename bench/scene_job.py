"""The scene path: one large GeoTIFF as an async job, followed to the end and checked."""

from __future__ import annotations

import itertools
import json
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import rasterio
from rio_cogeo.cogeo import cog_validate

from bench.raw import image_feed, measure, read_window
from service.runtime.segmentation import context_px
from service.runtime.session import ModelSession
from service.runtime.tiling import Tile, TileGrid
from tests.helpers.server import LiveServer, RssSampler


def raw_on_tiles(
    session: ModelSession, scene: Path, batch: int, tiles: int, min_time_s: float
) -> dict[str, Any]:
    """Raw throughput on the scene's own tiles: same grid, halo and batch size as the job.

    Tiles are taken from the grid's interior rows (full halo of real context).
    """
    manifest = session.manifest
    size = manifest.input.tile_size or 512
    overlap = manifest.input.tile_overlap or 0
    halo = context_px(manifest)
    with rasterio.open(scene) as ds:
        grid = TileGrid(ds.height, ds.width, size, min(overlap, size // 2), halo)
        height, width = ds.height, ds.width
    chosen = [_model_window(t, height, width) for t in grid][: max(tiles, batch)]
    images = np.stack([read_window(scene, t.y, t.x, t.size) for t in chosen])
    batches = [images[i : i + batch] for i in range(0, len(images) - batch + 1, batch)]
    feeds = [image_feed(manifest, b) for b in batches]
    results = [measure(session, f, 1, min_time_s / len(feeds), 1) for f in feeds]
    seconds = sum(r["latency_mean_ms"] for r in results) / 1000
    done = sum(r["batch"] for r in results)
    return {
        "input_side": int(images.shape[-1]),
        "batch": batch,
        "tiles_timed": done,
        "tiles_per_s": round(done / seconds, 3),
        "grid_tiles": len(grid),
    }


def _model_window(tile: Tile, height: int, width: int) -> Tile:
    # The window the server reads for a tile: its halo, shifted inside the scene
    # where the tiling has ``context`` (older tilings reflected beyond the edge).
    context = getattr(tile, "context", None)
    if context is not None:
        window: Tile = context(height, width)[0]
        return window
    grown: Tile = getattr(tile, "input")  # noqa: B009 - absent from newer tilings
    return grown


def session_counters(client: httpx.Client, model: str = "footprints") -> dict[str, float]:
    """The model's cumulative session seconds, batches and rows from ``/metrics``.

    Between two readings, session seconds over wall seconds is how busy the
    session was: a scene whose tiles never wait for I/O keeps it near 1.
    """
    wanted = {
        "attnserve_inference_duration_seconds_sum": "run_s",
        "attnserve_batch_size_sum": "rows",
        "attnserve_batch_size_count": "batches",
    }
    out: dict[str, float] = {}
    try:
        text = client.get("/metrics").text
    except httpx.HTTPError:
        return out
    for line in text.splitlines():
        name, _, rest = line.partition("{")
        if name in wanted and f'model="{model}"' in rest:
            out[wanted[name]] = float(line.rsplit(" ", 1)[1])
    return out


def _busy(before: dict[str, float], after: dict[str, float], wall_s: float) -> dict[str, Any]:
    if not before or not after or wall_s <= 0:
        return {}
    batches = after["batches"] - before["batches"]
    return {
        "session_busy_fraction": round((after["run_s"] - before["run_s"]) / wall_s, 3),
        "batches": int(batches),
        "mean_batch_rows": round((after["rows"] - before["rows"]) / max(batches, 1), 2),
    }


def follow_job(
    client: httpx.Client, submit: dict[str, Any], limit_s: float, poll_s: float
) -> tuple[dict[str, Any], float, float]:
    """Submit an async job (``POST /predict`` with ``submit``) and poll it until it ends.

    Returns its last JSON, and the seconds from submission to its acceptance and
    to its end. A refused job, or one not ended after ``limit_s``, raises RuntimeError.
    """
    started = time.perf_counter()
    resp = client.post("/predict", **submit)
    accepted = time.perf_counter() - started
    if resp.status_code != 202:
        raise RuntimeError(f"scene job refused: {resp.status_code} {resp.text[:300]}")
    job_id = resp.json()["job_id"]
    while True:
        job: dict[str, Any] = client.get(f"/jobs/{job_id}").json()
        if job["state"] in ("done", "failed", "cancelled"):
            return job, accepted, time.perf_counter() - started
        if time.perf_counter() - started > limit_s:
            raise RuntimeError(f"scene job still {job['state']} after {limit_s:g} s")
        time.sleep(poll_s)


def run_scene_job(
    server: LiveServer,
    scene: Path,
    job_dir: Path,
    log: Any = print,
    poll_s: float = 0.25,
) -> dict[str, Any]:
    """Submit ``scene`` to a fresh server as an async footprints job and follow it.

    Returns timings, the server's peak memory, the progress check and the COG checks.
    """
    with rasterio.open(scene) as ds:
        crs, transform, width, height = ds.crs, ds.transform, ds.width, ds.height
    body = scene.read_bytes()
    progress: list[int] = []
    states: list[str] = []
    pid = server.pid
    with RssSampler(pid) as rss, httpx.Client(base_url=server.url, timeout=600) as client:
        t_submit = time.perf_counter()
        resp = client.post(
            "/predict",
            data={"model": "footprints", "async": "true"},
            files={"image": ("scene.tif", body, "image/tiff")},
        )
        t_accepted = time.perf_counter()
        if resp.status_code != 202:
            raise RuntimeError(f"scene job refused: {resp.status_code} {resp.text[:300]}")
        job_id = resp.json()["job_id"]
        t_running = t_tiled = None
        at_start = at_tiled = None
        last_print = 0.0
        total = 0
        while True:
            job = client.get(f"/jobs/{job_id}").json()
            state = job["state"]
            if not states or states[-1] != state:
                states.append(state)
            done = int(job.get("progress", {}).get("done", 0))
            total = int(job.get("progress", {}).get("total", 0)) or total
            now = time.perf_counter()
            if state == "running" and t_running is None:
                t_running = now
                at_start = session_counters(client)
            if total and done >= total and t_tiled is None:
                t_tiled = now
                at_tiled = session_counters(client)
            progress.append(done)
            if now - last_print > 10:
                log(f"    scene job: {state} {done}/{total} tiles, rss {rss.peak_kib // 1024} MiB")
                last_print = now
            if state in ("done", "failed", "cancelled"):
                break
            time.sleep(poll_s)
        t_done = time.perf_counter()
    hwm = server.hwm_kib()
    if state != "done":
        raise RuntimeError(f"scene job ended {state}: {job.get('error')}")
    meta = json.loads((job_dir / job_id[:2] / job_id / "meta.json").read_text())
    tiles = int(meta["tiling"]["tiles"])
    server_s = float(meta["seconds"])
    increasing = all(b >= a for a, b in itertools.pairwise(progress))
    files = sorted({la["file"] for la in meta["layers"] if la.get("storage") == "cog"})
    cogs = []
    for name in files:
        path = job_dir / job_id[:2] / job_id / name
        valid, errors, warnings = cog_validate(str(path), quiet=True)
        with rasterio.open(path) as out:
            same_crs = out.crs == crs
            same_transform = out.transform == transform
            same_size = (out.width, out.height) == (width, height)
            overviews = out.overviews(1)
        cogs.append(
            {
                "file": name,
                "cog_valid": bool(valid),
                "errors": errors,
                "warnings": warnings,
                "same_crs": same_crs,
                "same_transform": same_transform,
                "same_size": same_size,
                "overviews": overviews,
                "bytes": path.stat().st_size,
            }
        )
    busy = _busy(at_start or {}, at_tiled or {}, (t_tiled or 0) - (t_running or 0))
    return {
        "job_id": job_id,
        "session_during_tiling": busy,
        "scene": {"width": width, "height": height, "bytes": len(body), "crs": str(crs)},
        "tiles": tiles,
        "upload_s": round(t_accepted - t_submit, 2),
        "server_job_s": server_s,
        "tiling_s": round((t_tiled or t_done) - (t_running or t_accepted), 2),
        "finish_s": round(t_done - (t_tiled or t_done), 2),
        "tiles_per_s_tiling": round(tiles / ((t_tiled or t_done) - (t_running or t_accepted)), 3),
        "tiles_per_s_job": round(tiles / server_s, 3),
        "peak_rss_mib_sampled": round(rss.peak_kib / 1024, 1),
        "vm_hwm_mib": round((hwm or 0) / 1024, 1),
        "progress": {
            "polls": len(progress),
            "only_increases": increasing,
            "reached_total": bool(progress) and progress[-1] == tiles,
            "last": progress[-1] if progress else None,
            "total": tiles,
        },
        "states": states,
        "outputs": cogs,
    }
