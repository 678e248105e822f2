"""bench.quantize: FP32 and INT8 copies timed in one run and scored on held-out tiles."""

from __future__ import annotations

import json
from pathlib import Path

from bench.quantize.__main__ import main


def test_a_quick_run_times_and_scores_every_model(tmp_path: Path) -> None:
    args = ["--per-tile", "1", "--seconds", "0.1", "--rounds", "1", "--profile-runs", "1",
            "--out-dir", str(tmp_path)]  # fmt: skip
    assert main(args) == 0
    result = json.loads((tmp_path / "results.json").read_text())
    models = ["fp32", "int8", "int8-gates-fp32", "int8-finest-fp32"]
    assert list(result["scores"]) == models
    assert result["held_out"] == ["Tile 8/image_part_001.jpg"]
    assert result["calibration"]["calibration_images"] == 2
    for row in result["throughput"]:
        assert [len(row["cpu_ms_per_tile"][m]) for m in models] == [1] * 4
        assert all(v > 0 for m in models for v in row["tiles_per_s"][m])
    kept = result["quantization"]["int8-gates-fp32"]["float32_nodes"]
    assert len(kept) >= 4
    assert all("/gates." in name for name in kept)
    assert result["quantization"]["int8"]["float32_nodes"] == []
    copies = result["summary"]["copies"]
    assert set(copies) == set(models[1:])
    assert result["scores"]["fp32"]["pixel_iou_vs_fp32"] == 1.0
    page = (tmp_path / "results.md").read_text()
    assert "| int8-finest-fp32 |" in page
    assert "## CPU time per tile" in page
    # The finest level is profiled in every model, by its node names.
    profile = result["level_profile_ms"]
    assert all(profile[m]["decoders.3"] > 0 for m in models)
    assert "load average" in page
