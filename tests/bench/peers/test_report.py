"""The peers table's targets and its place in results.md."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bench.peers import report


def rows(*levels: tuple[int, float, float]) -> list[dict[str, Any]]:
    return [
        {"concurrency": c, "requests": 40, "throughput_rps": rps, "p50_ms": p99 / 2,
         "p95_ms": p99 * 0.9, "p99_ms": p99, "errors": 0, "server_rss_mib": 700.0,
         "load_average": [1.0, 1.0, 1.0], "raw_now": {"best_per_s": 10.0}}
        for c, rps, p99 in levels
    ]  # fmt: skip


def peers() -> dict[str, Any]:
    raw = {"throughput_per_s": 10.0, "latency_p50_ms": 95.0}
    return {
        "started": "2026-12-07T07:00:00+0000",
        "machine": {"cpu": "AMD EPYC", "cores": 2, "ram_gib": 23.5, "gpu": "none",
                    "python": "3.11.7", "onnxruntime": "1.32.0", "attnserve_git": "abc"},
        "usable_cpus": 2,
        "load_average_start": [1.0, 1.0, 1.0],
        "load_average_end": [1.0, 1.0, 1.0],
        "plan": {"concurrency": [1, 4, 16], "burst_s": 10.0, "rounds": 3},
        "tile": "512 x 512 RGB deflate GeoTIFF",
        "raw": {"batch_1": raw, "batch_4": raw, "side_by_side": raw, "best_per_s": 10.0},
        "systems": {
            "attnserve": {
                "returns": "more", "rows": rows((1, 8, 150), (4, 10, 500), (16, 9, 1700))
            },
            "fast": {"returns": "less", "rows": rows((1, 9, 120), (4, 11, 400), (16, 11, 1600))},
            "slow": {"returns": "less", "rows": rows((1, 5, 200), (4, 6, 900), (16, 6, 2900))},
            "broken": {"returns": "less", "error": "pip install failed: no wheel"},
        },
    }  # fmt: skip


def test_checks_compare_saturation_and_p99_at_the_most_clients() -> None:
    checks = {c["name"]: c for c in report.checks(peers())}
    assert set(checks) == {
        "attnserve at saturation >= fast", "attnserve p99 at 16 clients < fast",
        "attnserve at saturation >= slow", "attnserve p99 at 16 clients < slow",
    }  # fmt: skip
    # Saturation is each server's best level, wherever it is.
    assert not checks["attnserve at saturation >= fast"]["ok"]
    assert checks["attnserve at saturation >= fast"]["value"] == round(10 / 11, 3)
    assert checks["attnserve at saturation >= slow"]["value"] == round(10 / 6, 3)
    assert not checks["attnserve p99 at 16 clients < fast"]["ok"]
    assert checks["attnserve p99 at 16 clients < slow"]["ok"]
    assert checks["attnserve p99 at 16 clients < slow"]["value"] == -1200.0


def test_sections_after_the_peers_section_stay() -> None:
    text = "# results\n\n## Scene path\n\nx\n\n" + report.HEADING + "\n\nold\n\n## Scenes\n\ny\n"
    assert report.replace_section(text, report.HEADING + "\n\nnew") == (
        "# results\n\n## Scene path\n\nx\n\n" + report.HEADING + "\n\nnew\n\n## Scenes\n\ny\n"
    )
    alone = report.replace_section("# results\n", "## Peers\n\nnew")
    assert alone == "# results\n\n## Peers\n\nnew\n"


def test_merge_replaces_only_the_peers_section(tmp_path: Path) -> None:
    (tmp_path / "results.json").write_text(json.dumps({"raw": {"kept": True}}))
    (tmp_path / "results.md").write_text("# attnserve benchmark results\n\n## Scene path\n\nx\n")
    data = peers()
    data["checks"] = report.checks(data)
    report.merge(data, tmp_path)
    data["started"] = "2026-12-08T07:00:00+0000"
    report.merge(data, tmp_path)
    md = (tmp_path / "results.md").read_text()
    assert md.startswith("# attnserve benchmark results\n\n## Scene path\n\nx\n\n" + report.HEADING)
    assert md.count(report.HEADING) == 1
    assert "2026-12-08" in md
    assert "2026-12-07T07:00:00" not in md
    assert "**broken**: not measured: pip install failed: no wheel" in md
    assert "| attnserve | more | 10.00 (4) | 100% | 75 / 150 | 250 / 500 | 850 / 1700 |" in md
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["raw"] == {"kept": True}
    assert results["peers"]["started"] == "2026-12-08T07:00:00+0000"
