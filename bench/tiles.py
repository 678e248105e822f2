"""Map tile latency over HTTP: random tiles of a large scene job; a synchronous job's first tile.

``python -m bench.tiles [--repeat 8] [--tiles 200] [--out bench/tiles]`` starts a
live server, runs ``cogeo.tif`` tiled ``repeat x repeat`` (8192 x 8192 by default)
as a footprints scene job, then GETs ``--tiles`` random Web Mercator tiles of its
probability layer one after another (zoom uniform between the layer's min and max
zoom, then a tile uniform among those over the data) and reports p50 and p99.

It also measures, for a synchronous job (``--sync-side``, 1024 x 1024 by default:
2048 x 2048 runs as a scene job within the default memory limits), the two ways
its layers can become tileable rasters: on the first tile (the first
tiles' latency against later ones: each tile worker writes its own copy) or when
the job is stored (the time to write every layer as a tiled GeoTIFF, which every
synchronous request would then pay).

Results go to ``<out>/results.json`` and ``<out>/results.md``. Not run by the tests.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import morecantile

from tests.helpers.bodies import upload
from tests.helpers.geotiff import SHARED
from tests.helpers.jobs import follow, submit
from tests.helpers.scenes import tile_scene
from tests.helpers.server import REPO
from tests.helpers.server import start as start_server

WEB_MERCATOR = morecantile.tms.get("WebMercatorQuad")


def _ms(seconds: list[float]) -> dict[str, float]:
    ordered = sorted(seconds)

    def pct(p: float) -> float:
        return round(1000 * ordered[min(len(ordered) - 1, int(p * len(ordered)))], 1)

    return {
        "n": len(ordered),
        "p50_ms": pct(0.50),
        "p90_ms": pct(0.90),
        "p99_ms": pct(0.99),
        "mean_ms": round(1000 * statistics.fmean(ordered), 1),
        "max_ms": round(1000 * ordered[-1], 1),
    }


def random_tiles(tilejson: dict[str, Any], count: int, seed: int) -> list[tuple[int, int, int]]:
    """``count`` tiles over the layer's bounds: a random zoom, then a random tile at it."""
    rng = random.Random(seed)
    west, south, east, north = tilejson["bounds"]
    picked = []
    for _ in range(count):
        z = rng.randint(tilejson["minzoom"], tilejson["maxzoom"])
        ul = WEB_MERCATOR.tile(west, north, z)
        lr = WEB_MERCATOR.tile(east, south, z)
        picked.append((z, rng.randint(ul.x, lr.x), rng.randint(ul.y, lr.y)))
    return picked


def time_tiles(client: httpx.Client, base: str, tiles: list[tuple[int, int, int]]) -> list[float]:
    """Seconds per tile GET, one after another (each answer read whole)."""
    spent = []
    for z, x, y in tiles:
        start = time.perf_counter()
        answer = client.get(f"{base}/{z}/{x}/{y}.png")
        spent.append(time.perf_counter() - start)
        answer.raise_for_status()
    return spent


def scene_tiles(work: Path, repeat: int, count: int) -> dict[str, Any]:
    """p50/p99 of random tiles of a footprints scene job's probability layer."""
    scene = tile_scene(SHARED / "cogeo.tif", repeat, work / "scene.tif")
    server = start_server(REPO / "models" / "shipped", work, log="scene-server.log")
    try:
        began = time.perf_counter()
        job = submit(server, [scene], model="footprints", **{"async": "true"})
        body, _ = follow(server, job["job_id"], timeout_s=3600)
        job_s = time.perf_counter() - began
        assert body["state"] == "done", body
        job_id = job["job_id"]
        with httpx.Client(base_url=server.url, timeout=60) as client:
            start = time.perf_counter()
            tilejson = client.get(f"/jobs/{job_id}/tilejson/probability.json").json()
            first_request_s = time.perf_counter() - start  # the tile workers start here
            base = f"/jobs/{job_id}/tiles/probability"
            time_tiles(client, base, random_tiles(tilejson, 10, seed=1))  # warm both workers
            spent = time_tiles(client, base, random_tiles(tilejson, count, seed=0))
        return {
            "size": body["georeference"]["width"],
            "job_s": round(job_s, 1),
            "minzoom": tilejson["minzoom"],
            "maxzoom": tilejson["maxzoom"],
            "first_map_request_s": round(first_request_s, 2),
            "tiles": _ms(spent),
        }
    finally:
        server.stop()


def sync_first_tile(work: Path, side: int) -> dict[str, Any]:
    """A synchronous job's first tile against later ones, and the cost of making COGs at once."""
    from service.config import Settings
    from service.jobs.store import open_store
    from service.pipeline.tiles import ArrayRasters, tile_layers

    image = tile_scene(SHARED / "cogeo.tif", side // 1024, work / "sync.tif").read_bytes()
    server = start_server(REPO / "models" / "shipped", work, log="sync-server.log")
    try:
        with httpx.Client(base_url=server.url, timeout=120) as client:
            start = time.perf_counter()
            made = client.post("/predict", **upload(image))
            predict_s = time.perf_counter() - start
            made.raise_for_status()
            if made.status_code != 200:
                raise SystemExit(
                    f"the {side} px upload ran as a scene job: try a smaller --sync-side"
                )
            job_id = made.json()["job_id"]
            # The workers start on this request; the probability layer is not made yet.
            tilejson = client.get(f"/jobs/{job_id}/tilejson/gate_1.json").json()
            tiles = random_tiles(tilejson, 22, seed=2)
            spent = time_tiles(client, f"/jobs/{job_id}/tiles/probability", tiles)
        store = open_store(Settings(job_dir=work / "jobs"))
        record = store.load(job_id)
        rasters = ArrayRasters()
        start = time.perf_counter()
        for tl in tile_layers(record):
            rasters.get(record, store, tl.layer)
        at_store_s = time.perf_counter() - start
        return {
            "size": made.json()["georeference"]["width"],
            "predict_s": round(predict_s, 3),
            "first_tiles_ms": [round(1000 * v, 1) for v in spent[:2]],
            "later_tiles": _ms(spent[2:]),
            "all_layers_as_rasters_ms": round(1000 * at_store_s, 1),
            "raster_bytes": rasters.size,
        }
    finally:
        server.stop()


def write(results: dict[str, Any], out: Path) -> None:
    """``results.json`` and a short ``results.md``."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    scene, sync = results["scene"], results["sync"]
    t = scene["tiles"]
    lines = [
        "# Map tile latency",
        "",
        f"`python -m bench.tiles` on {results['machine']}, load average before the run "
        f"{results['load_before']}, after {results['load_after']}.",
        "",
        f"Scene job {scene['size']} x {scene['size']} (footprints, {scene['job_s']} s), "
        f"probability layer, {t['n']} random tiles over HTTP one after another, zoom "
        f"{scene['minzoom']}-{scene['maxzoom']}:",
        "",
        "| p50 | p90 | p99 | mean | max |",
        "| --- | --- | --- | --- | --- |",
        f"| {t['p50_ms']} ms | {t['p90_ms']} ms | {t['p99_ms']} ms | {t['mean_ms']} ms "
        f"| {t['max_ms']} ms |",
        "",
        f"The first map request started the tile workers: {scene['first_map_request_s']} s.",
        "",
        f"Synchronous job {sync['size']} x {sync['size']}: its first tiles took "
        f"{' and '.join(str(v) for v in sync['first_tiles_ms'])} ms (each tile worker "
        f"writes the layer as a tiled GeoTIFF in memory on its first tile of it), later "
        f"tiles p50 {sync['later_tiles']['p50_ms']} ms. Writing all of its map layers at "
        f"store time would take {sync['all_layers_as_rasters_ms']} ms, added to every "
        f"such request (this one took {round(1000 * sync['predict_s'])} ms), tiled or not.",
        "",
    ]
    (out / "results.md").write_text("\n".join(lines))


def main() -> None:
    """Run both measurements and write the results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=8)
    parser.add_argument("--tiles", type=int, default=200)
    parser.add_argument("--sync-side", type=int, default=1024, help="a multiple of 1024")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "tiles")
    args = parser.parse_args()
    load_before = [round(v, 2) for v in os.getloadavg()]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "scene").mkdir()
        (work / "sync").mkdir()
        sync = sync_first_tile(work / "sync", args.sync_side)
        scene = scene_tiles(work / "scene", args.repeat, args.tiles)
    results = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "load_before": load_before,
        "load_after": [round(v, 2) for v in os.getloadavg()],
        "scene": scene,
        "sync": sync,
    }
    write(results, args.out)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
