"""bench.scene_finish: outputs written both ways compared, the page of a run."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio

from bench.scene_finish import compare, main, markdown, replay
from service.raster.cog import RasterSink
from service.raster.georef import Georeference

GEOREF = Georeference(
    crs=rasterio.crs.CRS.from_epsg(32631).to_wkt(),
    transform=(10.0, 0.0, 500000.0, 0.0, -10.0, 5000000.0),
    width=2048,
    height=1024,
)


def _output(path: Path, seed: int) -> Path:
    values = np.random.default_rng(seed).random((2, GEOREF.height, GEOREF.width))
    values[:, 300:420] = np.nan
    sink = RasterSink(path, GEOREF, ["a", "b"], stream=False)
    sink.write(0, values.astype(np.float32))
    return sink.finish()


def test_the_same_values_written_both_ways_compare_equal_and_others_do_not(
    tmp_path: Path,
) -> None:
    job = _output(tmp_path / "attention.tif", 1)
    partial, from_partial = replay(job, tmp_path, stream=False)
    streamed, from_stream = replay(job, tmp_path, stream=True)
    assert not from_partial["streamed"]
    assert from_stream["streamed"]
    assert from_partial["cog_valid"]
    assert from_stream["cog_valid"]
    assert {"write_s", "overviews_s", "cog_s"} <= set(from_partial)
    assert {"write_s", "assemble_s"} <= set(from_stream)
    same = compare(partial, streamed)
    assert same["georeference_same"]
    assert same["full_resolution_max_diff"] == 0.0
    assert len(same["overview_max_diff"]) == 2
    assert same["overview_max_diff"][0] <= 1e-6
    other = compare(job, _output(tmp_path / "other.tif", 2))
    assert other["full_resolution_max_diff"] > 0.5


def test_the_page_shows_each_job_comparison_and_profile_row() -> None:
    job = {
        "tiles": 121,
        "tiling_s": 30.0,
        "finish_s": 5.0,
        "job_s": 35.0,
        "server_cpu_s": 40.0,
        "vm_hwm_mib": 1300.0,
        "outputs": {"attention.tif": {"cog_valid": True, "mib": 250.0}},
        "load_average_after": [2.0, 2.0, 2.0],
    }
    same = {"georeference_same": True, "full_resolution_max_diff": 0.0, "overview_max_diff": [0]}
    profile = {"write_s": 1.0, "write_cpu_s": 1.0, "finish_cpu_s": 0.1, "mib": 250.0}
    results = {
        "machine": {"cpu": "x", "cores": 2},
        "cpus": 2,
        "started": "now",
        "before": "abc",
        "load_average_start": [1, 1, 1],
        "load_average_end": [1, 1, 1],
        "scenes": [
            {
                "side": 4096,
                "jobs": {"before": job, "after": {**job, "finish_s": 0.5}},
                "compared": {"attention.tif": {"jobs": same, "same_values_both_ways": same}},
                "profile": {
                    "attention.tif": {
                        "partial_file": {**profile, "overviews_s": 1.0, "cog_s": 3.0},
                        "streamed": {**profile, "assemble_s": 0.1, "cog_valid": True},
                    }
                },
            }
        ],
    }
    results["scenes"][0]["profile"]["attention.tif"]["partial_file"]["cog_valid"] = True
    page = markdown(results)
    row = "| 4096 | before | 121 | 30.0 | 5.0 | 35.0 | 14.3% | 40.0 | 1300.0 | True |"
    assert f"{row} attention.tif 250.0 |" in page
    assert "| 4096 | after | 121 | 30.0 | 0.5 | 35.0 | 1.4% |" in page
    assert "| 4096 | attention.tif | same values both ways | True | 0.0 | [0] |" in page
    assert "| 4096 | attention.tif | partial_file | 1.0 | 1.0 | 3.0 | - |" in page


@pytest.mark.slow
def test_a_run_of_the_smallest_scene_times_both_jobs_and_writes_its_page(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    argv = ["scene_finish", "--repeats", "1", "--before", "HEAD", "--out", str(tmp_path)]
    monkeypatch.setattr(sys, "argv", argv)
    assert main() == 0
    results = json.loads((tmp_path / "scene_finish.json").read_text())
    (scene,) = results["scenes"]
    for job in scene["jobs"].values():
        assert job["tiles"] == 9
        assert job["tiling_s"] > 0
        assert all(o["cog_valid"] for o in job["outputs"].values())
    assert scene["jobs"]["after"]["finished"]  # this checkout logs each output it finishes
    for pair in scene["compared"].values():
        assert pair["same_values_both_ways"]["full_resolution_max_diff"] == 0.0
    assert "## Where finishing goes" in (tmp_path / "scene_finish.md").read_text()
