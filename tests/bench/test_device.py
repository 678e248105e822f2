"""bench.device: raw and in-process served figures with onnxruntime and numpy alone."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# What a bare GPU machine lacks; the script must not import any of it.
ABSENT = ("fastapi", "pydantic", "pydantic_settings", "rasterio", "uvicorn", "starlette", "httpx")


def test_runs_without_the_web_stack_and_measures_both_precisions(tmp_path: Path) -> None:
    out = tmp_path / "device.json"
    script = (
        "import sys, runpy\n"
        f"for m in {ABSENT!r}: sys.modules[m] = None\n"
        "sys.argv = ['bench.device', '--fp16', '--batches', '1,2', '--seconds', '0.1',\n"
        f"            '--requests', '6', '--clients', '3', '--out', {str(out)!r}]\n"
        "runpy.run_module('bench.device', run_name='__main__')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(out.read_text())
    runs = {(r["model"].split(":")[0], r["precision"]): r for r in result["runs"]}
    # Every shipped model is measured (files are named <name>-<version>.onnx).
    shipped = {f.stem.rsplit("-", 1)[0] for f in (REPO / "models" / "shipped").glob("*.onnx")}
    assert {"footprints", "crops"} <= shipped
    assert set(runs) == {(m, p) for m in shipped for p in ("float32", "float16")}
    for run in runs.values():
        assert [r["batch"] for r in run["raw"]] == [1, 2]
        assert all(r["throughput_per_s"] > 0 for r in run["raw"])
    for precision in ("float32", "float16"):
        served = runs[("footprints", precision)]["served"]
        assert served["requests"] == 6
        assert 0 < served["of_raw_best"] < 2
    assert "raw batch 1" in done.stderr
