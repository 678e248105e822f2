"""The benchmark's targets, checked, and its results as a Markdown report.

``python -m bench.report bench/results.json`` checks the targets again and
rewrites ``results.md`` beside it (after the report itself changed).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from bench.peers.report import section as peers_section
from bench.scene_scale_report import section as scene_section


def _best(rows: list[dict[str, Any]], key: str = "throughput_per_s") -> dict[str, Any]:
    return max(rows, key=lambda r: r[key])


def _at(rows: list[dict[str, Any]], concurrency: int) -> dict[str, Any] | None:
    return next((r for r in rows if r["concurrency"] == concurrency), None)


def checks(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The performance targets, each with its figures and whether it is met."""
    out: list[dict[str, Any]] = []
    fp_raw = results["raw"]["footprints"]
    tile, side = str(fp_raw["tile"]), str(fp_raw["server_input"])
    # Compared against raw on the input the server actually runs for a tile upload
    # and, where that differs, on the bare tile too.
    compare = [(f"{side} px, the input the server runs", fp_raw["by_side"][side])]
    if tile != side:
        compare.append((f"{tile} px, the bare tile", fp_raw["by_side"][tile]))
    for mode, http_fp in results["http"]["footprints"].items():
        if mode == "off":
            continue
        sat_row = max(http_fp, key=lambda r: r["throughput_rps"])
        sat = sat_row["throughput_rps"]
        now = sat_row.get("raw_now")
        start_best = _best(compare[0][1])["throughput_per_s"]
        if now is not None:
            ratio = sat / now["best_per_s"]
            out.append({
                "name": f"footprints saturation >= 85% of raw, raw timed just before "
                f"(batching {mode})",
                "ok": ratio >= 0.85,
                "value": round(ratio, 3),
                "detail": f"server {sat:.2f} req/s at c={sat_row['concurrency']} vs raw "
                f"{now['best_per_s']:.2f} tiles/s (best of batch 1 and 4, {side} px) = "
                f"{100 * ratio:.0f}%" + _drift(now["best_per_s"], start_best),
            })  # fmt: skip
        side_by_side = (now or {}).get("side_by_side")
        if side_by_side is not None:
            limit = side_by_side["throughput_per_s"]
            ratio = sat / limit
            out.append({
                "name": f"footprints saturation >= 85% of raw {side_by_side['sessions']} "
                f"sessions side by side, timed just before (batching {mode})",
                "ok": ratio >= 0.85,
                "value": round(ratio, 3),
                "detail": f"server {sat:.2f} req/s vs raw {limit:.2f} tiles/s "
                f"({side_by_side['sessions']} sessions x {side_by_side['threads_each']} "
                f"threads, batch 1) = {100 * ratio:.0f}%",
            })  # fmt: skip
        for label, rows in compare:
            best = _best(rows)
            ratio = sat / best["throughput_per_s"]
            out.append({
                "name": f"footprints saturation >= 85% of raw best batch at the run's start, "
                f"raw at {label} (batching {mode})",
                "ok": ratio >= 0.85,
                "value": round(ratio, 3),
                "detail": f"server {sat:.2f} req/s vs raw {best['throughput_per_s']:.2f} "
                f"tiles/s (batch {best['batch']}) = {100 * ratio:.0f}%",
            })  # fmt: skip
        c1 = _at(http_fp, 1)
        if c1 is None:
            continue
        refs = []
        if c1.get("raw_now") is not None:
            refs.append(("raw timed just before", c1["raw_now"]["batch_1"]["latency_p50_ms"]))
        refs += [
            (f"raw at the run's start, {label}",
             next(r for r in rows if r["batch"] == 1)["latency_p50_ms"])
            for label, rows in compare
        ]  # fmt: skip
        start = next(r for r in compare[0][1] if r["batch"] == 1)["latency_p50_ms"]
        for label, single in refs:
            delta = c1["p50_ms"] - single
            out.append({
                "name": f"footprints c=1 median <= raw single run + 5 ms, {label} "
                f"(batching {mode})",
                "ok": delta <= 5.0,
                "value": round(delta, 2),
                "detail": f"server p50 {c1['p50_ms']:.1f} ms vs raw {single:.1f} ms: "
                f"{delta:+.1f} ms" + _drift(single, start),
            })  # fmt: skip
    crops = results["http"]["crops"]
    c = 16 if _at(crops["on"], 16) else max(r["concurrency"] for r in crops["on"])
    on, off = _at(crops["on"], c), _at(crops["off"], c)
    if on and off:
        ratio = on["throughput_rps"] / max(off["throughput_rps"], 1e-9)
        out.append({
            "name": f"crops batching on >= 2x off at c={c}",
            "ok": ratio >= 2.0,
            "value": round(ratio, 3),
            "detail": f"on {on['throughput_rps']:.0f} req/s vs off {off['throughput_rps']:.0f} "
            f"req/s = {ratio:.2f}x" + _batching_ceiling(results["raw"]["crops"]["batches"]),
        })  # fmt: skip
        for mode, rows in crops.items():
            row = _at(rows, c)
            if mode == "off" or row is None:
                continue
            out.append({
                "name": f"crops p99 < 100 ms at c={c} (batching {mode})",
                "ok": row["p99_ms"] < 100,
                "value": row["p99_ms"],
                "detail": f"p99 {row['p99_ms']:.1f} ms, {row['throughput_rps']:.0f} req/s",
            })  # fmt: skip
    by_side = results["raw"]["footprints"]["by_side"]
    scene_side = str(results["raw"]["footprints"].get("scene_input", side))
    start = {r["batch"]: r["throughput_per_s"] for r in by_side.get(scene_side, [])}
    for variant, scene in results["scene"].items():
        out += _scene_checks(variant, scene, start)
    return out


def _batching_ceiling(rows: list[dict[str, Any]]) -> str:
    """What batching gains in the bare session: the most it can gain behind HTTP."""
    single = next((r for r in rows if r["batch"] == 1), None)
    if single is None:
        return ""
    best = _best(rows)
    gain = best["throughput_per_s"] / single["throughput_per_s"]
    return (
        f"; in the bare session batch {best['batch']} gives {gain:.2f}x batch 1 "
        f"({best['throughput_per_s']:.0f} vs {single['throughput_per_s']:.0f} requests/s), "
        "the most batching could gain with HTTP costing nothing"
    )


def _drift(reference: float, start: float) -> str:
    """A warning when a raw reference is far from the run's start: a load spike."""
    if start <= 0 or abs(reference / start - 1) <= 0.25:
        return ""
    return (
        f" (UNRELIABLE: this raw figure and the same one at the run's start ({start:.2f}) "
        f"differ by {100 * (reference / start - 1):+.0f}%: other work loaded the CPU during "
        "one of them)"
    )


def _scene_checks(
    variant: str, scene: dict[str, Any], start: dict[int, float] | None = None
) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    job, raw_tiles = scene["job"], scene["raw"]
    for label, key in (("whole job incl. COG finish", "tiles_per_s_job"),
                       ("tiling phase", "tiles_per_s_tiling")):  # fmt: skip
        ratio = job[key] / raw_tiles["tiles_per_s"]
        out.append({
            "name": f"[{variant}] scene tiles/s >= 80% of raw on the same tiles ({label})",
            "ok": ratio >= 0.8,
            "value": round(ratio, 3),
            "detail": f"{job[key]:.2f} vs raw {raw_tiles['tiles_per_s']:.2f} tiles/s "
            f"(batch {raw_tiles['batch']}, {raw_tiles['input_side']} px) = {100 * ratio:.0f}%"
            + _drift(raw_tiles["tiles_per_s"], (start or {}).get(raw_tiles["batch"], 0.0)),
        })  # fmt: skip
    peak = max(job["peak_rss_mib_sampled"], job["vm_hwm_mib"])
    out.append({
        "name": f"[{variant}] scene job peak RSS < 2.5 GB",
        "ok": peak * 2**20 < 2.5e9,
        "value": peak,
        "detail": f"VmHWM {job['vm_hwm_mib']:.0f} MiB = {job['vm_hwm_mib'] * 2**20 / 1e9:.2f} GB, "
        f"sampled VmRSS peak {job['peak_rss_mib_sampled']:.0f} MiB",
    })  # fmt: skip
    outputs_ok = all(
        o["cog_valid"] and o["same_crs"] and o["same_transform"] and o["same_size"]
        for o in job["outputs"]
    )
    prog = job["progress"]
    out.append({
        "name": f"[{variant}] scene outputs are valid COGs with the input's CRS and transform; "
        "progress only increases and reaches total",
        "ok": outputs_ok and prog["only_increases"] and prog["reached_total"],
        "value": None,
        "detail": ", ".join(
            f"{o['file']}: cog {o['cog_valid']}, crs {o['same_crs']}, "
            f"transform {o['same_transform']}" for o in job["outputs"]
        ) + f"; progress increasing {prog['only_increases']}, reached {prog['last']}/"
        f"{prog['total']}",
    })  # fmt: skip
    return out


def _scene_md(variant: str, scene: dict[str, Any]) -> list[str]:
    job, rt = scene["job"], scene["raw"]
    lines = [
        f"### {variant}",
        "",
        f"- scene: {job['scene']['width']} x {job['scene']['height']} px "
        f"({job['scene']['bytes'] / 2**20:.1f} MiB JPEG GeoTIFF, {job['scene']['crs']}), "
        f"{job['tiles']} tiles of 512 px with {rt['input_side']} px inputs (halo included)",
        f"- upload and check: {job['upload_s']} s; tiling: {job['tiling_s']} s "
        f"({job['tiles_per_s_tiling']} tiles/s); COG finishing after the last tile: "
        f"{job['finish_s']} s; whole job (server-side): {job['server_job_s']} s "
        f"({job['tiles_per_s_job']} tiles/s)",
        f"- raw session on the same tiles (batch {rt['batch']}, {rt['input_side']} px, "
        f"{rt['tiles_timed']} tiles timed, just before the job): {rt['tiles_per_s']} tiles/s",
        f"- server peak memory: VmHWM {job['vm_hwm_mib']} MiB, sampled VmRSS peak "
        f"{job['peak_rss_mib_sampled']} MiB (fresh server, only this job)",
        _busy_line(job.get("session_during_tiling") or {}),
        f"- progress: {job['progress']['polls']} polls, only increases: "
        f"{job['progress']['only_increases']}, reached {job['progress']['last']} / "
        f"{job['progress']['total']}; states seen {job['states']}",
        f"- settings: {scene['settings']}",
        "",
    ]
    lines += _table(
        ["output", "valid COG", "same CRS", "same transform", "same size", "overviews", "MiB"],
        [[o["file"], o["cog_valid"], o["same_crs"], o["same_transform"], o["same_size"],
          o["overviews"], round(o["bytes"] / 2**20, 1)] for o in job["outputs"]],
    )  # fmt: skip
    return [*lines, ""]


def _now(row: dict[str, Any], what: str) -> Any:
    now = row.get("raw_now")
    if now is None:
        return "-"
    return now["batch_1"]["latency_p50_ms"] if what == "latency" else now["best_per_s"]


def _busy_line(busy: dict[str, Any]) -> str:
    if not busy:
        return "- session busy during tiling: not measured"
    return (
        f"- session busy during tiling (from /metrics: session seconds / wall seconds): "
        f"{100 * busy['session_busy_fraction']:.0f}%, {busy['batches']} batches of "
        f"{busy['mean_batch_rows']} tiles on average"
    )


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines


def status_table(result: dict[str, Any], case: str = "case") -> list[str]:
    """A soak's statuses per request kind against those it expects, as a Markdown table."""
    rows = [
        [
            name,
            ", ".join(map(str, result["expected"][name])),
            ", ".join(f"{s}: {n}" for s, n in got.items()),
        ]
        for name, got in sorted(result["statuses"].items())
    ]
    return _table([case, "expected", "got"], rows)


def markdown(results: dict[str, Any]) -> str:
    """The results as a Markdown report."""
    m = results["machine"]
    lines = [
        "# attnserve benchmark results" + (" (quick mode)" if results["quick"] else ""),
        "",
        "Written by `python -m bench.run` (`make bench`); the figures are in "
        "`bench/results.json`. The limit is a bare ONNX Runtime session with the "
        "server's own session options on the same machine.",
        "",
        "## Machine",
        "",
        f"- CPU: {m['cpu']}, {m['cores']} cores, {m['ram_gib']} GiB RAM",
        f"- GPU: {m['gpu']}",
        f"- python {m['python']}, onnxruntime {m['onnxruntime']} "
        f"({', '.join(m['onnxruntime_providers'])}), numpy {m['numpy']}",
        f"- attnserve git {m['attnserve_git']}",
        f"- load average (1, 5, 15 min) at start {results['load_average_start']}, "
        f"at end {results['load_average_end']} (the machine's 2 cores may be shared with "
        "other work; figures are as noisy as that load)",
        f"- started {results['started']}",
        "",
        "## Targets",
        "",
    ]
    lines += _table(
        ["target", "met", "figures"],
        [[c["name"], "yes" if c["ok"] else "**no**", c["detail"]] for c in results["checks"]],
    )
    fp = results["raw"]["footprints"]
    lines += ["", "## Raw ONNX Runtime session (the limit)", ""]
    lines.append(f"Session options: {results['raw']['session_options']}.")
    for side, rows in fp["by_side"].items():
        what = (
            "a tile upload runs as this"
            if side == str(fp["server_input"])
            else "scene tiles with their halo"
        )
        lines += ["", f"footprints, {side} x {side} px input ({what}):", ""]
        lines += _table(
            ["batch", "p50 ms / batch", "min ms", "tiles/s", "runs"],
            [[r["batch"], r["latency_p50_ms"], r["latency_min_ms"], r["throughput_per_s"],
              r["runs"]] for r in rows],
        )  # fmt: skip
    cr = results["raw"]["crops"]
    lines += ["", f"crops, requests of {cr['parcels']} parcels x {cr['dates']} dates:", ""]
    lines += _table(
        ["batch (requests)", "series", "p50 ms / batch", "requests/s", "runs"],
        [[r["batch"], r["rows"], r["latency_p50_ms"], r["throughput_per_s"], r["runs"]]
         for r in cr["batches"]],
    )  # fmt: skip
    lines += ["", "## Server over HTTP", ""]
    lines.append(
        "uvicorn subprocess on 127.0.0.1; load from a separate process (`bench.load`, "
        "plain HTTP/1.1 keep-alive over asyncio streams, closed loop: each client sends its "
        "next request when the last is answered; its own CPU time is in the table, as it "
        "shares the machine with the server). Footprints requests: a 512 x 512 RGB deflate "
        "GeoTIFF of real imagery, JSON answer; crops: JSON body of 10 parcels x 24 dates."
    )
    for mode, info in results["http"]["server"].items():
        lines.append(
            f"- batching {mode}: settings {info['settings']}, VmHWM {info['vm_hwm_mib']} MiB"
        )
    for model in ("footprints", "crops"):
        for mode, rows in results["http"][model].items():
            lines += ["", f"{model}, batching {mode}:", ""]
            unit = "tiles/s" if model == "footprints" else "requests/s"
            lines += _table(
                ["concurrency", "requests", "req/s", "p50 ms", "p95 ms", "p99 ms", "errors",
                 "raw batch 1 p50 ms, just before", f"raw best {unit}, just before",
                 "client CPU s / wall s"],
                [[r["concurrency"], r["requests"], r["throughput_rps"], r["p50_ms"], r["p95_ms"],
                  r["p99_ms"], r["errors"], _now(r, "latency"), _now(r, "best"), _client(r)]
                 for r in rows],
            )  # fmt: skip
    lines += ["", "## Scene path", ""]
    for variant, scene in results["scene"].items():
        lines += _scene_md(variant, scene)
    if "peers" in results:  # written by bench.peers.run, after this run
        lines += ["", *peers_section(results["peers"])]
    # Written by bench.scene_scale and bench.scene_compression, beside results.json.
    scenes = scene_section(Path(__file__).parent)
    if scenes:
        lines += ["", *scenes]
    return "\n".join(lines) + "\n"


def _client(row: dict[str, Any]) -> str:
    if "client_cpu_s" not in row:
        return "-"
    return f"{row['client_cpu_s'] / row['wall_s']:.2f}"


def main() -> int:
    """Recheck a results file's targets and rewrite its Markdown report."""
    path = Path(sys.argv[1] if len(sys.argv) > 1 else "bench/results.json")
    results = json.loads(path.read_text())
    results["checks"] = checks(results)
    path.write_text(json.dumps(results, indent=2) + "\n")
    path.with_suffix(".md").write_text(markdown(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
