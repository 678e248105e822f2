"""The benchmark suite's quick mode: every stage runs and every check has figures."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_quick_benchmark_measures_every_stage(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "bench.run", "--quick", "--out", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert "raw footprints" in out.stdout  # progress is printed as it runs
    fp = results["raw"]["footprints"]["by_side"]
    assert all(r["throughput_per_s"] > 0 for rows in fp.values() for r in rows)
    for model in ("footprints", "crops"):
        for mode in ("on", "off"):
            rows = results["http"][model][mode]
            assert [r["concurrency"] for r in rows] == [1, 4]
            assert all(r["errors"] == 0 and r["ok"] > 0 for r in rows), rows
    side_by_side = results["http"]["footprints"]["on"][0]["raw_now"]["side_by_side"]
    assert side_by_side["sessions"] == 2
    assert side_by_side["throughput_per_s"] > 0
    assert all(r["errors"] == 0 for r in results["http"]["footprints"]["on, 1 CPU instance"])
    job = results["scene"]["defaults"]["job"]
    assert job["progress"]["only_increases"]
    assert job["progress"]["reached_total"]
    assert {o["file"] for o in job["outputs"]} == {"prediction.tif", "attention.tif"}
    assert all(o["cog_valid"] and o["same_crs"] and o["same_transform"] for o in job["outputs"])
    assert job["vm_hwm_mib"] > 0
    names = [c["name"] for c in results["checks"]]
    assert any("saturation" in n for n in names)
    assert any("peak RSS" in n for n in names)
    md = (tmp_path / "results.md").read_text()
    assert results["machine"]["cpu"] in md
    assert "## Scene path" in md
