"""bench.scene_scale_report: the results page's section from the scene benchmarks' JSON."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bench.scene_scale import verdicts
from bench.scene_scale_report import section

MACHINE = {"cpu": "Test CPU", "cores": 2, "ram_gib": 23.6, "attnserve_git": "abc"}
HEAD = {
    "machine": MACHINE,
    "started": "2026-12-07T07:00:00+0000",
    "load_average_start": [1.0, 1.0, 1.0],
    "load_average_end": [2.0, 2.0, 2.0],
}


def _scene(side: int, hwm: float) -> dict[str, Any]:
    return {
        "side": side,
        "tiles": side // 100,
        "s_per_tile_tiling": 0.2,
        "s_per_tile_job": 0.22,
        "server_cpu_s_per_tile": 0.21,
        "vm_hwm_mib": hwm,
        "footprints": {"status": 200, "seconds": 2.0, "polygons": 821, "worker_peak_mib": 240.0},
        "load_average_after": [3.5, 2.0, 1.0],
    }


def _codecs() -> dict[str, Any]:
    run = {"jpeg": [{}, {}], "deflate": [{}, {}]}
    summary = {
        name: {
            "best_tiles_per_s": tps,
            "vs_jpeg": round(tps / 9.0, 3),
            "within_10pct": tps / 9.0 >= 0.9,
            "server_cpu_s_per_tile": 0.23,
            "cpu_vs_jpeg": 1.0,
            "finish_s": 4.0,
            "best_job_tiles_per_s": tps * 0.8,
            "job_vs_raw": round(tps * 0.8 / 9.5, 3),
            "vm_hwm_mib": 1700.0,
        }
        for name, tps in (("jpeg", 9.0), ("deflate", 7.9))
    }
    return {
        **HEAD,
        "side": 8192,
        "repeat": 8,
        "files": {"jpeg": {"mb": 10.2}, "deflate": {"mb": 124.3}},
        "raw": {"input_side": 640, "batch": 4, "tiles_per_s": 9.5},
        "raw_end": {"tiles_per_s": 9.1},
        "after": run,
        "after_summary": summary,
    }


def test_the_section_names_the_machine_the_figures_and_each_target(tmp_path: Path) -> None:
    assert section(tmp_path) == []
    scenes = [_scene(4096, 1400.0), _scene(8192, 1450.0), _scene(16384, 1600.0)]
    scale = {**HEAD, "scenes": scenes, "verdicts": verdicts(scenes)}
    (tmp_path / "scene_scale.json").write_text(json.dumps(scale))
    (tmp_path / "scene_compression_8192.json").write_text(json.dumps(_codecs()))
    text = "\n".join(section(tmp_path))
    assert "Test CPU, 2 cores" in text
    assert "shared with other work" in text
    assert "| 16384 | 163 | 0.2 | 0.22 | 0.21 | 1600.0 | 2.0 | 821 | 240.0 | 3.5 |" in text
    assert "| [1.0, 1.036, 1.143] | **no** |" in text  # 1600 / 1400: 14% above
    assert "| deflate | 124.3 | 7.9 | 0.878 | **no** |" in text
    assert "9.5 tiles/s before the jobs, 9.1 after" in text
    assert "against the raw session: 66% (target 90%): **no**" in text


def test_the_section_gives_the_note_and_each_compared_runs_peak_memory(tmp_path: Path) -> None:
    scenes = [_scene(4096, 1400.0), _scene(8192, 1450.0), _scene(16384, 1600.0)]
    flat = [_scene(4096, 1300.0), _scene(8192, 1310.0), _scene(16384, 1326.0)]
    other = {**HEAD, "scenes": flat, "label": "Without streaming", "note": "A patch."}
    scale = {**HEAD, "scenes": scenes, "verdicts": verdicts(scenes), "note": "Found this."}
    scale["compared"] = [other]
    (tmp_path / "scene_scale.json").write_text(json.dumps(scale))
    text = "\n".join(section(tmp_path))
    assert "\nFound this.\n" in text
    assert (
        "- Without streaming (git abc): VmHWM 1300.0 / 1310.0 / 1326.0 MiB, the largest "
        "1.020x the smallest's. A patch." in text
    )
