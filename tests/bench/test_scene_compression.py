"""bench.scene_compression: the summary of rounds, CPU time and the code checked out before."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest

from bench.scene_compression import checkout, cpu_seconds, main, run_phase, summary


def _job(tiles_per_s: float, cpu: float) -> dict[str, Any]:
    return {
        "tiles_per_s_tiling": tiles_per_s,
        "tiles_per_s_job": tiles_per_s * 0.9,
        "server_cpu_s_per_tile": cpu,
        "finish_s": 3.0,
        "vm_hwm_mib": 1000.0,
        "load_average_after": [2.0, 2.0, 2.0],
    }


def test_each_file_is_judged_by_its_best_round_against_jpegs_best() -> None:
    runs = {
        "jpeg": [_job(10.0, 0.24), _job(8.0, 0.25)],
        "deflate": [_job(6.0, 0.26), _job(9.2, 0.24)],
        "lzw": [_job(8.5, 0.5), _job(8.9, 0.48)],
    }
    out = summary(runs, raw_tiles_per_s=10.0)
    assert out["jpeg"]["vs_jpeg"] == 1.0
    assert out["deflate"]["vs_jpeg"] == 0.92
    assert out["deflate"]["within_10pct"]
    assert out["deflate"]["median_tiles_per_s"] == 7.6
    assert out["lzw"]["vs_jpeg"] == 0.89
    assert not out["lzw"]["within_10pct"]
    assert out["lzw"]["cpu_vs_jpeg"] == 2.0
    # The whole job's best round against the raw session.
    assert out["deflate"]["job_vs_raw"] == pytest.approx(0.828)


def test_each_job_is_compared_with_the_raw_session_measured_right_before_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # The machine slows down between jobs: each job against its own raw figure.
    speeds = iter([10.0, 5.0, 8.0, 4.0])
    raws = iter([12.0, 6.0, 10.0, 4.0])
    monkeypatch.setattr("bench.scene_compression.one_job", lambda *a: _job(next(speeds) / 0.9, 0.3))
    paths = {"jpeg": tmp_path / "j.tif", "deflate": tmp_path / "d.tif"}
    runs = run_phase(paths, ("jpeg", "deflate"), tmp_path, "after", tmp_path, 2, lambda: next(raws))
    # Round 1: jpeg, deflate; round 2 reversed: deflate, jpeg.
    assert [j["job_vs_raw"] for j in runs["jpeg"]] == [pytest.approx(0.833), 1.0]
    assert [j["job_vs_raw"] for j in runs["deflate"]] == [pytest.approx(0.833), 0.8]
    out = summary(runs, raw_tiles_per_s=12.0)
    assert out["deflate"]["job_vs_raw_beside"] == [pytest.approx(0.833), 0.8]


def test_cpu_seconds_count_this_process_work() -> None:
    before = cpu_seconds(os.getpid())
    deadline = time.process_time() + 0.3
    while time.process_time() < deadline:
        pass
    assert cpu_seconds(os.getpid()) - before >= 0.2


def test_the_server_code_of_a_commit_is_extracted_alone(tmp_path: Path) -> None:
    sha = checkout("HEAD", tmp_path / "before")
    assert len(sha) == 12
    assert (tmp_path / "before" / "service" / "__main__.py").is_file()
    assert not (tmp_path / "before" / "tests").exists()


@pytest.mark.slow
def test_a_small_run_writes_both_reports(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        "sys.argv", ["scene_compression", "--repeat", "1", "--rounds", "1", "--out", str(tmp_path)]
    )
    main()
    # Scenes of another size than the committed 4096 x 4096 write a page of their own.
    text = (tmp_path / "scene_compression_1024.md").read_text()
    assert "| deflate-striped |" in text
    assert "## After" in text
    assert (tmp_path / "scene_compression_1024.json").is_file()
    assert not (tmp_path / "scene_compression.md").exists()
