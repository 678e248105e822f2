"""The hostile-load results as markdown: one table per run, and before against after."""

from __future__ import annotations

from typing import Any

from bench.machine import report_head
from bench.report import status_table

TARGETS = "status, peak RSS < 3 GiB, answer < 60 s, /healthz < 1 s throughout, no 500"


def _peak(r: dict[str, Any]) -> str:
    if r.get("skipped"):
        return "-"
    # A case answered between two 100 ms samples has no sampled peak: say so, not 0.
    text = f"{r['peak_rss_mb']:.0f}" if r["peak_rss_mb"] else "unsampled"
    if r.get("vm_hwm_mb") is not None and not r.get("vm_hwm_is_process_wide"):
        text += f" / {r['vm_hwm_mb']:.0f}"
    if r.get("killed"):
        text += f" ({r['killed']})"
    return text


def _failed(r: dict[str, Any]) -> str:
    if r.get("skipped"):
        return "skipped"
    missed = [k for k, ok in r["targets"].items() if not ok]
    return "all met" if not missed else "**missed: " + ", ".join(missed) + "**"


def run_table(run: dict[str, Any]) -> list[str]:
    """One run's cases as a markdown table, then each case's notes."""
    lines = [
        "| case | expected | got | peak RSS / VmHWM (MiB) | answer (s) | /healthz max (s) "
        "| 5xx | targets |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, r in run["cases"].items():
        five = r["server_5xx"]
        five_text = five if isinstance(five, str) else (", ".join(
            f"{k}: {v:g}" for k, v in five.items()) or "none")  # fmt: skip
        lines.append(
            f"| {name} | {r['expected']} | {'; '.join(r['statuses'])} | {_peak(r)} | "
            f"{r['answer_s']} | {r['healthz']['max_s']} ({r['healthz']['n']} probes, "
            f"{r['healthz']['failures']} failed) | {five_text} | {_failed(r)} |"
        )
    lines += ["", "Notes per case:", ""]
    for name, r in run["cases"].items():
        keys = ("rss_60s_after_mb", "ready_s", "job_dir_mb", "healthz_over_1s")
        extra = [f"{k} {r[k]}" for k in keys if r.get(k)]
        bits = r["notes"] + extra + [f"log: {p}" for p in r["log_problems"]]
        lines.append(f"- **{name}** ({r['what']}): " + "; ".join(str(b) for b in bits))
    return lines


def comparison(runs: dict[str, dict[str, Any]]) -> list[str]:
    """Before against after, case by case (where both runs have the case)."""
    if not {"before", "after"} <= set(runs):
        return []
    before, after = runs["before"]["cases"], runs["after"]["cases"]
    lines = [
        "## Before and after",
        "",
        "| case | status before -> after | peak RSS MiB before -> after | answer s "
        "| /healthz max s | targets after |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name, a in after.items():
        b = before.get(name)
        if b is None:
            continue
        lines.append(
            f"| {name} | {'; '.join(b['statuses'])} -> {'; '.join(a['statuses'])} | "
            f"{_peak(b)} -> {_peak(a)} | {b['answer_s']} -> {a['answer_s']} | "
            f"{b['healthz']['max_s']} -> {a['healthz']['max_s']} | {_failed(a)} |"
        )
    return [*lines, ""]


def soak_lines(soak: dict[str, Any] | None) -> list[str]:
    """The mixed soak's figures."""
    if not soak:
        return []
    rss = soak["rss_mb"]
    lines = [
        "",
        f"Soak (bench/soak with the hostile cases mixed in), {soak['duration_s']} s, "
        f"{soak['workers']} clients, commit {soak['commit']}: {soak['requests']} requests, "
        f"**{soak['unexpected']} unexpected statuses**; latency p50 {soak['latency_s']['p50']} s, "
        f"p99 {soak['latency_s']['p99']} s; RSS start {rss['start']} MiB, after warm-up "
        f"({rss['warmup_s']} s) {rss['after_warmup']} MiB, end {rss['end']} MiB, max "
        f"{rss['max']} MiB.",
        "",
        *status_table(soak, "soak case"),
    ]
    if soak["unexpected_examples"]:
        lines += ["", "Unexpected (first 20): " + "; ".join(map(str, soak["unexpected_examples"]))]
    return lines


def markdown(results: dict[str, Any]) -> str:
    """The whole results file."""
    lines = report_head(
        "Hostile-load results",
        results["machine"],
        f"On the machine of the latest run, GDAL {results['machine'].get('gdal')}. The cores "
        "are shared with other work: each run gives its load average at the start.",
    )
    lines += [
        "Made by `python -m bench.hostile` (see `bench/hostile/__init__.py`). Per case: the "
        "server's peak RSS sampled from `/proc/<pid>/status` every 100 ms, and `VmHWM` for "
        "cases with a server of their own; the time to answer; `/healthz` timed every 250 ms "
        "on a fresh connection throughout; 5xx counted from `/metrics` and tracebacks "
        "from the server log. The server is SIGKILLed above the memory cap so the machine "
        f"survives a case that would take more. Targets: {TARGETS}.",
        "",
    ]
    lines += comparison(results["runs"])
    for label, run in results["runs"].items():
        lines += [
            f"## Run: {label}",
            "",
            f"Commit {run['commit']}, {run['started']}, memory cap {run['cap_mb']} MiB, "
            f"load average at start {run.get('load_average')}.",
            "",
        ]
        lines += run_table(run)
        lines += soak_lines(run.get("soak"))
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"
