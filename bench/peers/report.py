"""The peers run's targets and its section of ``bench/results.md``.

``bench.report`` renders the section from the ``peers`` key of ``results.json``;
``bench.peers.run`` replaces it in place, from its heading to the next ``## ``
heading, so the sections around it stay as they are.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

HEADING = "## Peers: the same model behind other servers"
ATTNSERVE = "attnserve"
# Written by hand after a run, from its figures and profile; shown with that run.
WHY = Path(__file__).resolve().parent / "why.md"


def saturation(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The row of most requests per second."""
    return max(rows, key=lambda r: r["throughput_rps"])


def at(rows: list[dict[str, Any]], concurrency: int) -> dict[str, Any] | None:
    """The row of ``concurrency`` clients, if measured."""
    return next((r for r in rows if r["concurrency"] == concurrency), None)


def checks(results: dict[str, Any]) -> list[dict[str, Any]]:
    """attnserve (defaults) against each peer: saturation, and p99 at the most clients."""
    systems = results["systems"]
    ours = systems.get(ATTNSERVE, {}).get("rows")
    if not ours:
        return []
    top = max(r["concurrency"] for r in ours)
    sat, high = saturation(ours), at(ours, top)
    out: list[dict[str, Any]] = []
    for name, peer in systems.items():
        rows = peer.get("rows")
        if name.startswith(ATTNSERVE) or not rows:
            continue
        theirs = saturation(rows)
        ratio = sat["throughput_rps"] / max(theirs["throughput_rps"], 1e-9)
        out.append({
            "name": f"attnserve at saturation >= {name}",
            "ok": ratio >= 1.0,
            "value": round(ratio, 3),
            "detail": f"{sat['throughput_rps']:.2f} req/s (c={sat['concurrency']}) vs "
            f"{theirs['throughput_rps']:.2f} req/s (c={theirs['concurrency']}) = {ratio:.2f}x",
        })  # fmt: skip
        other = at(rows, top)
        if high is not None and other is not None:
            out.append({
                "name": f"attnserve p99 at {top} clients < {name}",
                "ok": high["p99_ms"] < other["p99_ms"],
                "value": round(high["p99_ms"] - other["p99_ms"], 1),
                "detail": f"{high['p99_ms']:.0f} ms vs {other['p99_ms']:.0f} ms",
            })  # fmt: skip
    return out


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return out


def _method(plan: dict[str, Any]) -> str:
    return (
        f"The servers run side by side; each is loaded in turn for {plan['burst_s']:g} s "
        f"bursts, {plan['rounds']} rounds per level, each round in a rotated order, so that "
        "every server meets the same spread of the neighbours' load; a server's bursts at a "
        "level are pooled (requests per second over their seconds, percentiles of all their "
        "latencies). Idle servers wait meanwhile; what they use then is the 'idle CPU' column."
    )


def _autogroup(enabled: bool | None) -> list[str]:
    if not enabled:
        return []
    return [
        "- This kernel schedules by autogroup (`sched_autogroup_enabled` = 1): while the cores "
        "are contended, each session (`setsid`) gets as much CPU as any other. Every server "
        "is started in a session of its own; 'sessions' counts those its processes are in.",
    ]


def _statuses(row: dict[str, Any]) -> str:
    return ", ".join(f"{k}: {v}" for k, v in sorted(row.get("statuses", {}).items()))


def _latency(rows: list[dict[str, Any]], c: int) -> str:
    row = at(rows, c)
    return "-" if row is None else f"{row['p50_ms']:.0f} / {row['p99_ms']:.0f}"


def section(peers: dict[str, Any]) -> list[str]:
    """The Peers section of ``results.md``, as lines."""
    m = peers["machine"]
    raw = peers["raw"]
    levels = list(peers["plan"]["concurrency"])
    lines = [
        HEADING,
        "",
        "Written by `python -m bench.peers.run` (`make bench-peers`, also the last step of "
        "`make bench`); figures in `results.json` under `peers`. The same footprints model "
        "(`footprints-2.2.0.onnx`) and the same upload (" + peers["tile"] + ", multipart "
        "`model` + `image`) from the same load generator (`bench.load`, closed loop, its own "
        "process), one server after the other on 127.0.0.1; each peer in its own virtual "
        "environment (`.bench-venvs/`).",
        "",
        f"- machine: {m['cpu']}, {m['cores']} cores ({peers['usable_cpus']} usable), "
        f"{m['ram_gib']} GiB RAM, {m['gpu']}; Python {m['python']}, ONNX Runtime "
        f"{m['onnxruntime']} (the same in every peer's environment)",
        f"- attnserve git {m['attnserve_git']}, started {peers['started']}; load average "
        f"(1, 5, 15 min) at start {peers['load_average_start']}, at end "
        f"{peers['load_average_end']}. The 2 cores may be shared with other work (test "
        "runs included) while this runs; the load average says how busy they were: read "
        "each row with the raw figure timed in the same rounds.",
        f"- ONNX Runtime threads: every session may use the {peers['usable_cpus']} usable "
        "cores and no more: each peer runs one session with intra-op threads = "
        f"{peers['usable_cpus']}; attnserve's default runs one such session for a lone "
        f"batch and {peers['usable_cpus']} one-thread sessions side by side while requests "
        "queue ('1 CPU instance' turns that off). All: graph optimisation level ALL, no "
        "spin-waiting, CPU execution provider.",
        f"- {_method(peers['plan'])} p50 / p99 in ms.",
        *_autogroup(peers.get("sched_autogroup")),
        "",
    ]
    header = ["server", "returns", "saturation req/s (clients)", "of raw limit"]
    header += [f"p50 / p99 ms, {c} client{'s' if c > 1 else ''}" for c in levels]
    header += ["errors", "RSS MiB (all processes)", "idle CPU, % of a core", "sessions", "start s"]
    rows = [[
        "raw ONNX Runtime session (the limit)", "probability + attention (all outputs)",
        f"{raw['best_per_s']:.2f} tiles/s", "100%",
        f"{raw['batch_1']['latency_p50_ms']:.0f} (batch 1, no HTTP)",
        *["-"] * (len(levels) - 1), "-", "-", "-", "-", "-",
    ]]  # fmt: skip
    unavailable = []
    for name, s in peers["systems"].items():
        if "rows" not in s:
            unavailable.append(f"- **{name}**: not measured: {s.get('error', 'unknown')}")
            continue
        sat = saturation(s["rows"])
        rows.append([
            name, s["returns"], f"{sat['throughput_rps']:.2f} ({sat['concurrency']})",
            f"{100 * sat['throughput_rps'] / sat['raw_now']['best_per_s']:.0f}%",
            *[_latency(s["rows"], c) for c in levels],
            sum(r["errors"] for r in s["rows"]),
            f"{max(r['server_rss_mib'] for r in s['rows']):.0f}",
            peers.get("idle_cpu_pct", {}).get(name, "-"), peers.get("sessions", {}).get(name, "-"),
            s.get("start_s", "-"),
        ])  # fmt: skip
    lines += _table(header, rows)
    lines += [
        "",
        f"The raw limit is the best of batch 1, batch 4 and two one-thread sessions side by "
        f"side ({raw['batch_1']['throughput_per_s']:.2f}, "
        f"{raw['batch_4']['throughput_per_s']:.2f} and "
        f"{raw['side_by_side']['throughput_per_s']:.2f} tiles/s at the run's start); "
        "'of raw limit' compares a server's saturation with the raw best timed in the rounds "
        "of that level.",
        "",
    ]
    if unavailable:
        lines += ["Not measured:", "", *unavailable, ""]
    lines += ["### Targets", ""]
    lines += _table(
        ["target", "met", "figures"],
        [[c["name"], "yes" if c["ok"] else "**no**", c["detail"]] for c in peers["checks"]],
    )
    lines += ["", "### Each server", ""]
    for name, s in peers["systems"].items():
        pins = f"; pins: {', '.join(s['pins'])}" if s.get("pins") else ""
        lines.append(f"- **{name}**: {s.get('notes', '')}{pins}")
    lines += ["", "Every level, pooled over its rounds, with the raw session timed in each:", ""]
    detail = []
    for name, s in peers["systems"].items():
        for r in s.get("rows", []):
            detail.append([
                name, r["concurrency"], r["requests"], r["throughput_rps"],
                " / ".join(f"{x:.2f}" for x in r.get("burst_rps", [])), r["p50_ms"],
                r["p95_ms"], r["p99_ms"], r["errors"], _statuses(r),
                r.get("server_cpu_ms_per_answer", "-"), r.get("server_cores", "-"),
                f"{r['raw_now']['best_per_s']:.2f}", r["load_average"][0],
            ])  # fmt: skip
    lines += _table(
        ["server", "clients", "requests", "req/s", "req/s of each burst", "p50 ms", "p95 ms",
         "p99 ms", "errors", "answers", "server CPU ms per answer", "cores the server got",
         "raw best tiles/s (mean of the rounds)",
         "load (1 min, mean)"],
        detail,
    )  # fmt: skip
    if peers.get("crops"):
        lines += ["", *_crops(peers["crops"])]
    if peers.get("profile"):
        lines += ["", f"py-spy profile of attnserve under that load: `{peers['profile']}`."]
    if WHY.is_file():
        lines += ["", "### Why", "", WHY.read_text().strip()]
    return lines


def _crops(crops: dict[str, Any]) -> list[str]:
    """attnserve's crops model at 16 clients, batching on and off, in the same run."""
    c = crops["clients"]
    lines = [
        f"### Crops at {c} clients",
        "",
        f"attnserve alone, after the peers: the crops model, JSON requests of "
        f"{crops['parcels']} parcels x {crops['dates']} dates, {c} clients, a fresh server "
        "with batching on (defaults) and then off.",
        "",
    ]
    lines += _table(
        ["batching", "requests", "req/s", "p50 ms", "p95 ms", "p99 ms", "errors", "load (1 min)"],
        [[mode, r["requests"], r["throughput_rps"], r["p50_ms"], r["p95_ms"], r["p99_ms"],
          r["errors"], r["load_average"][0]] for mode, r in crops["rows"].items()],
    )  # fmt: skip
    lines += [""]
    lines += _table(
        ["target", "met", "figures"],
        [[x["name"], "yes" if x["ok"] else "**no**", x["detail"]] for x in crops["checks"]],
    )
    return lines


def merge(peers: dict[str, Any], out_dir: Path) -> None:
    """Put the run into ``results.json`` (key ``peers``) and its section into ``results.md``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "results.json"
    results = json.loads(path.read_text()) if path.is_file() else {}
    results["peers"] = peers
    path.write_text(json.dumps(results, indent=2) + "\n")
    md = out_dir / "results.md"
    text = md.read_text() if md.is_file() else "# attnserve benchmark results\n"
    md.write_text(replace_section(text, "\n".join(section(peers))))


def replace_section(text: str, new: str) -> str:
    """``text`` with its Peers section (up to the next ``## `` heading) replaced by ``new``.

    Sections that others append after it stay; without one, ``new`` goes at the end.
    """
    head, found, rest = text.partition("\n" + HEADING)
    tail = ""
    if found and "\n## " in rest:
        tail = "\n## " + rest.split("\n## ", 1)[1]
    out = head.rstrip("\n") + "\n\n" + new.rstrip("\n") + "\n"
    return out + ("\n" + tail.lstrip("\n") if tail else "")
