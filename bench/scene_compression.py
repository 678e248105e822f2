"""Scene jobs of the same pixels stored with different compressions, before and after a change.

``python -m bench.scene_compression [--repeat 4] [--files a,b] [--before REF] [--out DIR]`` builds
``cogeo.tif`` repeated ``repeat x repeat`` times (4096 x 4096 by default) as JPEG,
deflate (with and without the horizontal predictor), LZW, zstd, uncompressed and
striped deflate GeoTIFFs, then runs each through a fresh server as an async
footprints job, one after the other, and reports the tiling phase's tiles/s
against the JPEG file's. On a shared machine other work moves wall times, so the
files run ``--rounds`` times, in reverse order every other round: each file's best
round is compared, and the server's CPU seconds per tile (which others' work
hardly moves) are reported beside. With ``--before REF`` the server code of that
commit (``git archive``) runs the files first, once, in the same run. The raw
session's throughput on the scene's own tiles is measured once, as the limit, and
each file's whole job (COG finishing included) is compared with it.

Writes ``scene_compression.json`` and ``scene_compression.md`` to ``--out``
(``bench/`` by default); scenes of another size than 4096 x 4096 write
``scene_compression_<side>.*``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.machine import load_average, machine, report_head
from bench.run import COMMON_ENV, SOURCE, say, server_dirs, settings_with
from bench.scene_job import raw_on_tiles, run_scene_job
from service.app import session_options
from service.config import SHIPPED_MODELS
from service.runtime.cpus import usable_cpus
from service.runtime.session import ModelSession
from tests.helpers.scenes import tile_scene
from tests.helpers.server import REPO, LiveServer

# name: (compress, predictor, tiled)
FILES: dict[str, tuple[str, int | None, bool]] = {
    "jpeg": ("jpeg", None, True),
    "deflate": ("deflate", None, True),
    "deflate-predictor2": ("deflate", 2, True),
    "lzw-predictor2": ("lzw", 2, True),
    "zstd": ("zstd", None, True),
    "uncompressed": ("none", None, True),
    "deflate-striped": ("deflate", None, False),
}
# The files run with the code before the change: what the slowdown was.
BEFORE_FILES = ("jpeg", "deflate", "lzw-predictor2", "zstd", "deflate-striped")
# Each file's tiling phase must be within this share of the JPEG file's tiles/s.
TOLERANCE = 0.10


def checkout(ref: str, into: Path) -> str:
    """The server code (``service/``) of commit ``ref``, extracted into ``into``; its sha."""
    sha = subprocess.run(
        ["git", "rev-parse", "--short=12", ref], cwd=REPO, capture_output=True, text=True
    ).stdout.strip()
    archive = subprocess.run(
        ["git", "archive", sha, "service"], cwd=REPO, capture_output=True, check=True
    ).stdout
    into.mkdir(parents=True, exist_ok=True)
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return sha


def one_job(scene: Path, work: Path, label: str, cwd: Path) -> dict[str, Any]:
    """``scene`` as a footprints job on a fresh server run from ``cwd``."""
    env = {**COMMON_ENV, **server_dirs(work / f"jobs-{label}")}
    load_before = load_average()
    with LiveServer(env, work / f"server-{label}.log", cwd=cwd) as server:
        cpu_before = cpu_seconds(server.pid)
        job = run_scene_job(server, scene, work / f"jobs-{label}", log=say)
        cpu = cpu_seconds(server.pid) - cpu_before
    keep = (
        "tiles",
        "tiling_s",
        "finish_s",
        "server_job_s",
        "tiles_per_s_tiling",
        "tiles_per_s_job",
        "vm_hwm_mib",
        "session_during_tiling",
    )
    out = {k: job[k] for k in keep}
    out["cogs_valid"] = all(c["cog_valid"] and c["same_transform"] for c in job["outputs"])
    out["server_cpu_s_per_tile"] = round(cpu / job["tiles"], 3)
    out["load_average_before"] = load_before
    out["load_average_after"] = load_average()
    say(
        f"  [{label}] tiling {job['tiling_s']:.1f} s ({job['tiles_per_s_tiling']:.2f} tiles/s), "
        f"finish {job['finish_s']:.1f} s, server CPU {out['server_cpu_s_per_tile']} s/tile, "
        f"load {out['load_average_after']}"
    )
    return out


def cpu_seconds(pid: int) -> float:
    """User and system CPU seconds a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_phase(
    scenes: dict[str, Path],
    names: tuple[str, ...],
    work: Path,
    label: str,
    cwd: Path,
    rounds: int,
    raw: Callable[[], float] | None = None,
) -> dict[str, Any]:
    """Every file ``rounds`` times (reverse order every other round); each file's rounds.

    With ``raw``, the raw session's tiles/s is measured right before each job
    (the machine's speed drifts from minute to minute) and kept with it.
    """
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names if r % 2 == 0 else tuple(reversed(names)):
            beside = raw() if raw is not None else None
            job = one_job(scenes[name], work, f"{label}-{name}-{r}", cwd)
            if beside:
                job["raw_tiles_per_s"] = beside
                job["job_vs_raw"] = round(job["tiles_per_s_job"] / beside, 3)
            runs[name].append(job)
    return runs


def summary(
    runs: dict[str, list[dict[str, Any]]], raw_tiles_per_s: float | None = None
) -> dict[str, dict[str, Any]]:
    """Per file: best and median tiling tiles/s, both against JPEG's; CPU per tile.

    With the raw session's tiles/s, each file's best whole job (tiles over the
    server's seconds from start to done, COGs included) against it.
    """
    best = {n: max(j["tiles_per_s_tiling"] for j in jobs) for n, jobs in runs.items()}
    median = {
        n: statistics.median(j["tiles_per_s_tiling"] for j in jobs) for n, jobs in runs.items()
    }
    cpu = {n: min(j["server_cpu_s_per_tile"] for j in jobs) for n, jobs in runs.items()}
    out = {}
    for name, jobs in runs.items():
        ratio = best[name] / best["jpeg"]
        out[name] = {
            "best_tiles_per_s": best[name],
            "median_tiles_per_s": round(median[name], 3),
            "vs_jpeg": round(ratio, 3),
            "median_vs_jpeg": round(median[name] / median["jpeg"], 3),
            "within_10pct": ratio >= 1 - TOLERANCE,
            "server_cpu_s_per_tile": cpu[name],
            "cpu_vs_jpeg": round(cpu[name] / cpu["jpeg"], 3),
            "finish_s": round(statistics.median(j["finish_s"] for j in jobs), 2),
            "vm_hwm_mib": max(j["vm_hwm_mib"] for j in jobs),
            "load_after": [j["load_average_after"][0] for j in jobs],
        }
        if raw_tiles_per_s:
            job = max(j["tiles_per_s_job"] for j in jobs)
            out[name]["best_job_tiles_per_s"] = job
            out[name]["job_vs_raw"] = round(job / raw_tiles_per_s, 3)
        beside = [j["job_vs_raw"] for j in jobs if "job_vs_raw" in j]
        if beside:
            out[name]["job_vs_raw_beside"] = beside
    return out


def markdown(results: dict[str, Any]) -> str:
    """The results as a Markdown report."""
    m = results["machine"]
    lines = report_head("Scene tiling by compression", m)
    lines += [
        f"`python -m bench.scene_compression` with {results['cpus']} CPUs usable,",
        f"{results['started']}, git {m.get('attnserve_git')}. Scene: `cogeo.tif` repeated "
        f"{results['repeat']} x {results['repeat']} ({results['side']} x {results['side']} px, "
        "RGB uint8, 512-px blocks; striped: GDAL's default strips), the shipped footprints "
        "model, default settings, one fresh server per job, jobs one after the other.",
        "The machine is shared: load average at start "
        f"{results['load_average_start']}, at end {results['load_average_end']}; "
        "each job's own is in the JSON.",
        "",
        f"Raw session on the scene's own tiles ({results['raw']['input_side']} px with halo, "
        f"batch {results['raw']['batch']}): {results['raw']['tiles_per_s']} tiles/s before the "
        f"jobs, {results.get('raw_end', {}).get('tiles_per_s', '-')} after them; 'job vs raw' "
        "is each file's best whole job (COG finishing included) against the first. "
        "'job vs raw beside' is each round's whole job against the raw session measured "
        "right before it (10 s, same tiles and batch): the machine's speed drifts between "
        "the start and the end.",
        "",
    ]
    for phase, title in (("before", "Before"), ("after", "After")):
        if phase not in results:
            continue
        sha = results.get(f"{phase}_git", "")
        lines += [
            f"## {title} ({sha})",
            "",
            "| file | MB | best tiles/s | vs JPEG | within 10% | median tiles/s | median vs JPEG "
            "| server CPU s/tile | CPU vs JPEG | finish s | best whole job tiles/s | job vs raw "
            "| job vs raw beside | peak RSS MiB | load after each |",
            "| --- | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: "
            "| --- | ---: | --- |",
        ]
        for name, v in results[f"{phase}_summary"].items():
            lines.append(
                f"| {name} | {results['files'][name]['mb']} | {v['best_tiles_per_s']} | "
                f"{v['vs_jpeg']} | {'yes' if v['within_10pct'] else 'NO'} | "
                f"{v['median_tiles_per_s']} | {v['median_vs_jpeg']} | "
                f"{v['server_cpu_s_per_tile']} | {v['cpu_vs_jpeg']} | {v['finish_s']} | "
                f"{v.get('best_job_tiles_per_s', '')} | {v.get('job_vs_raw', '')} | "
                f"{v.get('job_vs_raw_beside', '')} | {v['vm_hwm_mib']} | {v['load_after']} |"
            )
        lines.append("")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=4, help="cogeo.tif repeats a side")
    parser.add_argument("--before", help="also run the server code of this commit first")
    parser.add_argument("--rounds", type=int, default=2, help="runs of each file after")
    parser.add_argument(
        "--files", default=",".join(FILES), help=f"which files, of {', '.join(FILES)}"
    )
    parser.add_argument("--out", type=Path, default=REPO / "bench")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="attnserve-compression-") as tmp:
        work = Path(tmp)
        results: dict[str, Any] = {
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "machine": machine(),
            "load_average_start": load_average(),
            "repeat": args.repeat,
            "files": {},
        }
        results["cpus"] = usable_cpus()
        scenes = {}
        names = tuple(n for n in FILES if n in args.files.split(","))
        if "jpeg" not in names or "deflate" not in names:
            parser.error("--files must name jpeg (the reference) and deflate (raw's tiles)")
        for name in names:
            compress, predictor, tiled = FILES[name]
            path = work / f"{name}.tif"
            tile_scene(SOURCE, args.repeat, path, compress, predictor, tiled)
            scenes[name] = path
            results["files"][name] = {
                "compress": compress,
                "predictor": predictor,
                "tiled": tiled,
                "mb": round(path.stat().st_size / 2**20, 1),
            }
        results["side"] = 1024 * args.repeat
        settings = settings_with({**COMMON_ENV, **server_dirs(work / "jobs-raw")})
        session = ModelSession(SHIPPED_MODELS / "footprints-2.2.0.onnx", session_options(settings))
        batch = settings.batching.max_batch_size
        results["raw"] = raw_on_tiles(session, scenes["deflate"], batch, 16, 10.0)
        say(f"raw session: {results['raw']['tiles_per_s']} tiles/s")

        def raw_now() -> float:
            tiles_per_s = float(
                raw_on_tiles(session, scenes["deflate"], batch, 16, 10.0)["tiles_per_s"]
            )
            say(f"  raw session: {tiles_per_s} tiles/s")
            return tiles_per_s

        if args.before:
            before_dir = work / "before"
            results["before_git"] = checkout(args.before, before_dir)
            before = tuple(n for n in BEFORE_FILES if n in names)
            results["before"] = run_phase(scenes, before, work, "before", before_dir, 1)
            results["before_summary"] = summary(results["before"], results["raw"]["tiles_per_s"])
        results["after_git"] = results["machine"].get("attnserve_git")
        results["after"] = run_phase(scenes, names, work, "after", REPO, args.rounds, raw_now)
        results["after_summary"] = summary(results["after"], results["raw"]["tiles_per_s"])
        # Again at the end: on a shared machine the limit moves with others' work.
        results["raw_end"] = raw_on_tiles(session, scenes["deflate"], batch, 16, 10.0)
        results["load_average_end"] = load_average()
    stem = "scene_compression" if args.repeat == 4 else f"scene_compression_{results['side']}"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{stem}.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.out / f"{stem}.md").write_text(markdown(results))
    say(f"wrote {args.out / stem}.md")
    print(markdown(results))
    return 0 if all(v["within_10pct"] for v in results["after_summary"].values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
