"""The results page's section on scenes: cost as they grow, and by compression at 8192².

Read from ``scene_scale.json`` (``python -m bench.scene_scale``) and
``scene_compression_8192.json`` (``python -m bench.scene_compression --repeat 8``)
beside ``results.json``, so that ``bench.report`` keeps the section whenever it
rewrites the page. Either file may be missing; with neither there is no section.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

SCALE = "scene_scale.json"
CODECS = "scene_compression_8192.json"


def _machine(results: dict[str, Any]) -> str:
    m = results["machine"]
    return (
        f"{m.get('cpu')}, {m.get('cores')} cores, {m.get('ram_gib')} GiB RAM, no GPU; "
        f"git {m.get('attnserve_git')}, {results['started']}. The 2 cores may have been "
        "shared with other work (tests, builds, benchmarks); the load average says how busy: "
        f"{results['load_average_start']} at the start, {results['load_average_end']} at the end"
    )


def _yes(met: bool) -> str:
    return "yes" if met else "**no**"


def scale_lines(results: dict[str, Any]) -> list[str]:
    """Peak memory, seconds per tile and footprints of each scene size, and the targets."""
    v = results["verdicts"]
    lines = [
        "### Cost as scenes grow",
        "",
        f"`python -m bench.scene_scale` (details: `scene_scale.md`). Machine: "
        f"{_machine(results)}. `cogeo.tif` repeated (deflate, 512-px blocks), one fresh "
        "server per scene, then the job's footprints.",
        "",
        "| side | tiles | s/tile tiling | s/tile whole job | server CPU s/tile | VmHWM MiB "
        "| footprints s | polygons | footprints worker MiB | load after |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for s in results["scenes"]:
        fp = s["footprints"]
        lines.append(
            f"| {s['side']} | {s['tiles']} | {s['s_per_tile_tiling']} | {s['s_per_tile_job']} | "
            f"{s['server_cpu_s_per_tile']} | {s['vm_hwm_mib']} | {fp['seconds']} | "
            f"{fp.get('polygons', fp['status'])} | {fp['worker_peak_mib']} | "
            f"{s['load_average_after'][0]} |"
        )
    lines += [
        "",
        "| target | against the smallest scene | met |",
        "| --- | --- | --- |",
        f"| VmHWM of the largest scene at most 10% above the smallest's | "
        f"{v['vm_hwm_mib']['vs_smallest']} | {_yes(v['vm_hwm_mib']['met'])} |",
        f"| seconds per tile within 10% (tiling phase, wall) | "
        f"{v['s_per_tile_tiling']['vs_smallest']} | {_yes(v['s_per_tile_tiling']['met'])} |",
        f"| seconds per tile within 10% (whole job, wall) | "
        f"{v['s_per_tile_job']['vs_smallest']} | {_yes(v['s_per_tile_job']['met'])} |",
    ]
    if "server_cpu_s_per_tile" in v:
        cpu = v["server_cpu_s_per_tile"]
        lines.append(
            f"| server CPU seconds per tile within 10% | {cpu['vs_smallest']} | "
            f"{_yes(cpu['met'])} |"
        )
    if results.get("note"):
        lines += ["", results["note"]]
    others = results.get("compared", [])
    if others:
        lines += ["", "The same scenes run by other code (tables in `scene_scale.md`):", ""]
    for other in others:
        hwm = [s["vm_hwm_mib"] for s in other["scenes"]]
        lines.append(
            f"- {other['label']} (git {other['machine'].get('attnserve_git')}): VmHWM "
            f"{' / '.join(map(str, hwm))} MiB, the largest {hwm[-1] / hwm[0]:.3f}x the "
            f"smallest's. {other.get('note', '')}"
        )
    return [*lines, ""]


def codec_lines(results: dict[str, Any]) -> list[str]:
    """Each compression's tiling phase against JPEG's, and whole jobs against the raw session."""
    raw, end = results["raw"], results.get("raw_end", {})
    lines = [
        f"### Scenes of {results['side']}² by compression",
        "",
        f"`python -m bench.scene_compression --repeat {results['repeat']}` (details: "
        f"`scene_compression_{results['side']}.md`). Machine: {_machine(results)}. "
        "The same pixels in each file, one fresh server per job, every file run "
        f"{len(next(iter(results['after'].values())))} times (best round compared). Raw session "
        f"on the scene's own tiles ({raw['input_side']} px with halo, batch {raw['batch']}): "
        f"{raw['tiles_per_s']} tiles/s before the jobs, {end.get('tiles_per_s', '-')} after.",
        "",
        "| file | MB | tiling tiles/s | vs JPEG | within 10% | server CPU s/tile | CPU vs JPEG "
        "| finish s | whole job tiles/s | job vs raw | VmHWM MiB |",
        "| --- | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, v in results["after_summary"].items():
        lines.append(
            f"| {name} | {results['files'][name]['mb']} | {v['best_tiles_per_s']} | "
            f"{v['vs_jpeg']} | {_yes(v['within_10pct'])} | {v['server_cpu_s_per_tile']} | "
            f"{v['cpu_vs_jpeg']} | {v['finish_s']} | {v.get('best_job_tiles_per_s', '-')} | "
            f"{v.get('job_vs_raw', '-')} | {v['vm_hwm_mib']} |"
        )
    deflate = results["after_summary"].get("deflate", {})
    if "job_vs_raw" in deflate:
        lines += [
            "",
            f"Deflate whole job (all COGs) against the raw session: {deflate['job_vs_raw']:.0%} "
            f"(target 90%): {_yes(deflate['job_vs_raw'] >= 0.9)}.",
        ]
    return [*lines, ""]


def section(bench_dir: Path) -> list[str]:
    """The section's lines from the JSON files in ``bench_dir``, or none."""
    parts: list[str] = []
    if (bench_dir / SCALE).is_file():
        parts += scale_lines(json.loads((bench_dir / SCALE).read_text()))
    if (bench_dir / CODECS).is_file():
        parts += codec_lines(json.loads((bench_dir / CODECS).read_text()))
    while parts and not parts[-1]:
        parts.pop()
    if not parts:
        return []
    return ["## Scenes as they grow, and by compression", "", *parts]
