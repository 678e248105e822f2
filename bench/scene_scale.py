"""Cost as scenes grow: the same pixels at 4096², 8192² and 16384² as footprints scene jobs.

``python -m bench.scene_scale [--repeats 4,8,16] [--out DIR]`` writes ``cogeo.tif``
repeated ``r x r`` times (deflate, 512-px blocks) for each ``r``, runs each as an
async footprints scene job on a fresh server, one after the other, then asks the
finished job for its footprints (GeoJSON). Per scene: the server's peak memory
(VmHWM of a fresh server, and VmRSS sampled), seconds per tile in the tiling
phase and over the whole job, the whole job's and the finishing's seconds, the
server's CPU seconds per tile, and the footprints answer's seconds, polygons and
the peak memory of the worker process that made them. The raw session's
tiles/s on each scene's own tiles is measured right before its job (the
machine's speed drifts from minute to minute), and each job's tiling compared
with it. Targets: the largest scene's peak RSS at most 10% above the
smallest's; seconds per tile within 10% across the scenes.

Writes ``scene_scale.json`` and ``scene_scale.md`` to ``--out`` (``bench/`` by default).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from bench.machine import load_average, machine, report_head
from bench.run import COMMON_ENV, SOURCE, say, server_dirs, settings_with
from bench.scene_compression import cpu_seconds
from bench.scene_job import raw_on_tiles, run_scene_job
from service.app import session_options
from service.config import SHIPPED_MODELS
from service.runtime.cpus import usable_cpus
from service.runtime.session import ModelSession
from tests.helpers.scenes import tile_scene
from tests.helpers.server import REPO, LiveServer, RssSampler, proc_status_kib

# The largest scene's deflate file is about 500 MB: the upload limit is raised to take it,
# and the footprints of a 16384 x 16384 scene get the time and polygons they need.
SCALE_ENV = {
    "ATTNSERVE_MAX_UPLOAD_MB": "2048",
    "ATTNSERVE_FOOTPRINTS_TIMEOUT_S": "900",
    "ATTNSERVE_FOOTPRINTS_MAX_FEATURES": "1000000",
}
# Peak RSS and seconds per tile of every scene must be within this share of the smallest's.
TOLERANCE = 0.10


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (children, their children, ...)."""
    out: list[int] = []
    todo = [pid]
    while todo:
        parent = todo.pop()
        kids: list[int] = []
        # Each thread lists the children it started: a worker thread's too.
        for task in Path(f"/proc/{parent}/task").glob("*"):
            try:
                kids += [int(p) for p in (task / "children").read_text().split()]
            except OSError:
                continue
        out += kids
        todo += kids
    return out


class ChildPeak(RssSampler):
    """The highest VmHWM of any process below ``pid`` while it runs (sampled every 50 ms)."""

    def __init__(self, pid: int, interval_s: float = 0.05) -> None:
        super().__init__(pid, interval_s)

    def _run(self) -> None:
        while not self._stop.is_set():
            for child in descendants(self.pid):
                self.peak_kib = max(self.peak_kib, proc_status_kib(child, "VmHWM") or 0)
            self._stop.wait(self.interval_s)


def footprints(server: LiveServer, job_id: str) -> dict[str, Any]:
    """The job's footprints as GeoJSON: seconds, polygons, the worker's peak memory."""
    with ChildPeak(server.pid) as peak, httpx.Client(base_url=server.url, timeout=1200) as c:
        started = time.perf_counter()
        resp = c.get(f"/jobs/{job_id}/footprints")
        seconds = time.perf_counter() - started
    out: dict[str, Any] = {
        "status": resp.status_code,
        "seconds": round(seconds, 2),
        "worker_peak_mib": round(peak.peak_kib / 1024, 1),
        "bytes": len(resp.content),
    }
    if resp.status_code == 200:
        out["polygons"] = len(resp.json()["features"])
    else:
        out["error"] = resp.text[:300]
    return out


def one_scene(
    repeat: int, work: Path, raw: Callable[[Path], float] | None = None
) -> dict[str, Any]:
    """A deflate scene of ``cogeo.tif`` repeated ``repeat`` times, as a job on a fresh server.

    With ``raw``, the raw session's tiles/s on the scene's own tiles is measured
    right before the job (the machine's speed drifts) and the tiling compared with it.
    """
    scene = tile_scene(SOURCE, repeat, work / f"scene-{repeat}.tif", "deflate")
    label = f"{1024 * repeat}"
    beside = raw(scene) if raw is not None else None
    jobs = work / f"jobs-{label}"
    env = {**COMMON_ENV, **SCALE_ENV, **server_dirs(jobs)}
    load_before = load_average()
    with LiveServer(env, work / f"server-{label}.log") as server:
        cpu_before = cpu_seconds(server.pid)
        job = run_scene_job(server, scene, jobs, log=say)
        cpu = cpu_seconds(server.pid) - cpu_before
        say(f"  [{label}] job done: VmHWM {job['vm_hwm_mib']} MiB; footprints ...")
        prints = footprints(server, job["job_id"])
    tiles = job["tiles"]
    out = {
        "side": 1024 * repeat,
        "file_mb": round(scene.stat().st_size / 2**20, 1),
        "tiles": tiles,
        "tiling_s": job["tiling_s"],
        "finish_s": job["finish_s"],
        "server_job_s": job["server_job_s"],
        "s_per_tile_tiling": round(job["tiling_s"] / tiles, 4),
        "s_per_tile_job": round(job["server_job_s"] / tiles, 4),
        "server_cpu_s_per_tile": round(cpu / tiles, 3),
        "vm_hwm_mib": job["vm_hwm_mib"],
        "peak_rss_mib_sampled": job["peak_rss_mib_sampled"],
        "upload_s": job["upload_s"],
        "session_during_tiling": job["session_during_tiling"],
        "outputs_valid": all(
            c["cog_valid"] and c["same_crs"] and c["same_transform"] and c["same_size"]
            for c in job["outputs"]
        ),
        "outputs_mib": {c["file"]: round(c["bytes"] / 2**20, 1) for c in job["outputs"]},
        "footprints": prints,
        "load_average_before": load_before,
        "load_average_after": load_average(),
    }
    if beside:
        out["raw_tiles_per_s"] = beside
        out["tiling_vs_raw"] = round(tiles / job["tiling_s"] / beside, 3)
    say(
        f"  [{label}] {tiles} tiles, tiling {out['s_per_tile_tiling']} s/tile, job "
        f"{out['s_per_tile_job']} s/tile, finish {out['finish_s']} s, VmHWM "
        f"{out['vm_hwm_mib']} MiB, footprints {prints}"
    )
    scene.unlink()
    return out


def verdicts(scenes: list[dict[str, Any]]) -> dict[str, Any]:
    """The targets: peak RSS and seconds per tile of each scene against the smallest's."""
    small = scenes[0]
    out: dict[str, Any] = {}
    for key in ("vm_hwm_mib", "s_per_tile_tiling", "s_per_tile_job", "server_cpu_s_per_tile"):
        ratios = [round(s[key] / small[key], 3) for s in scenes]
        if key == "vm_hwm_mib":
            ok = ratios[-1] <= 1 + TOLERANCE
        else:
            ok = max(ratios) / min(ratios) <= 1 + TOLERANCE
        out[key] = {"vs_smallest": ratios, "met": ok}
    if all("tiling_vs_raw" in s for s in scenes):
        ratios = [round(s["tiling_vs_raw"] / small["tiling_vs_raw"], 3) for s in scenes]
        out["tiling_vs_raw"] = {
            "vs_smallest": ratios,
            "met": max(ratios) / min(ratios) <= 1 + TOLERANCE,
            "values": [s["tiling_vs_raw"] for s in scenes],
        }
    return out


def markdown(results: dict[str, Any]) -> str:
    """The results as a Markdown page."""
    lines = report_head(
        "Cost as scenes grow",
        results["machine"],
        f"`python -m bench.scene_scale` with {results['cpus']} CPUs usable, "
        f"{results['started']}, git {results['machine'].get('attnserve_git')}. "
        "Scenes: `cogeo.tif` repeated r x r (RGB uint8, deflate, 512-px blocks), the shipped "
        "footprints model, default settings (upload limit raised to take the largest file), "
        "one fresh server per scene, one after the other, then `GET /jobs/{id}/footprints`.",
    )
    lines += [
        "The machine's 2 cores may be shared with other work (tests, builds) while this runs; "
        "the load average says how busy they were: at start "
        f"{results['load_average_start']}, at end "
        f"{results['load_average_end']}; each scene's own is in the table.",
        "",
        *scene_table(results["scenes"]),
    ]
    lines += [
        "",
        "| target | against the smallest scene | met |",
        "| --- | --- | --- |",
        *verdict_rows(results["verdicts"]),
    ]
    if results.get("note"):
        lines += ["", results["note"]]
    for other in compared(results):
        lines += [
            "",
            f"{other.get('label', 'Before')} (git {other['machine'].get('attnserve_git')}, "
            f"{other['started']}, load average {other['load_average_start']} to "
            f"{other['load_average_end']}): {other.get('note', '')}",
            "",
            *scene_table(other["scenes"]),
            "",
            "| target | against the smallest scene | met |",
            "| --- | --- | --- |",
            *verdict_rows(verdicts(other["scenes"])),
        ]
    return "\n".join([*lines, ""])


def compared(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Other runs shown beside this one (``before``: a page written before there were several)."""
    return [*results.get("compared", []), *([results["before"]] if "before" in results else [])]


def scene_table(scenes: list[dict[str, Any]]) -> list[str]:
    """One row per scene."""
    lines = [
        "| side | file MB | tiles | tiling s | s/tile tiling | finish s | whole job s "
        "| s/tile job | server CPU s/tile | VmHWM MiB | sampled RSS MiB | COGs valid "
        "| footprints s | polygons | footprints worker peak MiB | load after |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- "
        "| ---: | ---: | ---: | --- |",
    ]
    for s in scenes:
        fp = s["footprints"]
        lines.append(
            f"| {s['side']} | {s['file_mb']} | {s['tiles']} | {s['tiling_s']} | "
            f"{s['s_per_tile_tiling']} | {s['finish_s']} | {s['server_job_s']} | "
            f"{s['s_per_tile_job']} | {s['server_cpu_s_per_tile']} | {s['vm_hwm_mib']} | "
            f"{s['peak_rss_mib_sampled']} | {s['outputs_valid']} | {fp['seconds']} | "
            f"{fp.get('polygons', fp['status'])} | {fp['worker_peak_mib']} | "
            f"{s['load_average_after']} |"
        )
    return lines


def verdict_rows(v: dict[str, Any]) -> list[str]:
    """One row per target."""
    return [
        f"| peak RSS (VmHWM) of the largest at most 10% above the smallest's | "
        f"{v['vm_hwm_mib']['vs_smallest']} | {'yes' if v['vm_hwm_mib']['met'] else 'NO'} |",
        f"| seconds per tile, tiling phase, within 10% | {v['s_per_tile_tiling']['vs_smallest']}"
        f" | {'yes' if v['s_per_tile_tiling']['met'] else 'NO'} |",
        f"| seconds per tile, whole job, within 10% | {v['s_per_tile_job']['vs_smallest']} | "
        f"{'yes' if v['s_per_tile_job']['met'] else 'NO'} |",
        f"| server CPU seconds per tile (what others' work hardly moves), within 10% | "
        f"{v['server_cpu_s_per_tile']['vs_smallest']} | "
        f"{'yes' if v['server_cpu_s_per_tile']['met'] else 'NO'} |",
        *(
            [
                "| tiling tiles/s against the raw session measured right before each job "
                f"({v['tiling_vs_raw']['values']}), within 10% | "
                f"{v['tiling_vs_raw']['vs_smallest']} | "
                f"{'yes' if v['tiling_vs_raw']['met'] else 'NO'} |"
            ]
            if "tiling_vs_raw" in v
            else []
        ),
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", default="4,8,16", help="cogeo.tif repeats a side, in order")
    parser.add_argument("--out", type=Path, default=REPO / "bench")
    parser.add_argument(
        "--report", type=Path, help="rewrite the page of this results JSON, running nothing"
    )
    parser.add_argument(
        "--compare",
        type=Path,
        action="append",
        default=[],
        help="with --report: another run to show beside it (repeat for several)",
    )
    parser.add_argument(
        "--label", action="append", default=[], help="each --compare run's name (Before, ...)"
    )
    parser.add_argument(
        "--compare-note", action="append", default=[], help="what each --compare run's code was"
    )
    parser.add_argument("--note", help="with --report: what the run found, below its targets")
    args = parser.parse_args()
    if args.report:
        results = json.loads(args.report.read_text())
        if args.note is not None:
            results["note"] = args.note
        if args.compare:
            results.pop("before", None)
            results["compared"] = []
            for i, path in enumerate(args.compare):
                other = json.loads(path.read_text())
                for key in ("before", "compared", "note"):
                    other.pop(key, None)
                other["label"] = args.label[i] if i < len(args.label) else "Before"
                other["note"] = args.compare_note[i] if i < len(args.compare_note) else ""
                results["compared"].append(other)
        results["verdicts"] = verdicts(results["scenes"])
        args.report.write_text(json.dumps(results, indent=2) + "\n")
        args.report.with_suffix(".md").write_text(markdown(results))
        return 0
    repeats = [int(r) for r in args.repeats.split(",")]
    results: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine(),
        "cpus": usable_cpus(),
        "load_average_start": load_average(),
        "settings": SCALE_ENV,
        "scenes": [],
    }
    settings = settings_with({**COMMON_ENV, **server_dirs(REPO / "var" / "bench-raw")})
    session = ModelSession(SHIPPED_MODELS / "footprints-2.2.0.onnx", session_options(settings))
    batch = settings.batching.max_batch_size

    def raw(scene: Path) -> float:
        tiles_per_s = float(raw_on_tiles(session, scene, batch, 16, 10.0)["tiles_per_s"])
        say(f"  raw session: {tiles_per_s} tiles/s")
        return tiles_per_s

    with tempfile.TemporaryDirectory(prefix="attnserve-scale-") as tmp:
        for repeat in repeats:
            say(f"scene {1024 * repeat} x {1024 * repeat}")
            results["scenes"].append(one_scene(repeat, Path(tmp), raw))
    results["load_average_end"] = load_average()
    results["verdicts"] = verdicts(results["scenes"])
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "scene_scale.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.out / "scene_scale.md").write_text(markdown(results))
    say(f"wrote {args.out / 'scene_scale.md'}")
    print(markdown(results))
    return 0 if all(v["met"] for v in results["verdicts"].values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
