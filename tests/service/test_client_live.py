"""The ``attnserve`` client commands end to end against a live server and real data."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import rasterio

from tests.helpers.server import LiveServer

BANDS = ["B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B11", "B12"]


def _attnserve(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "service.cli", *args],
        capture_output=True,
        text=True,
        timeout=600,
    )


def _check_outputs(out: Path, scene: Path) -> None:
    with rasterio.open(scene) as src:
        crs, transform, size = src.crs, src.transform, (src.width, src.height)
    for suffix in (".prediction.tif", ".attention.tif"):
        with rasterio.open(out / f"cogeo{suffix}") as dst:
            assert dst.crs == crs
            assert dst.transform == transform
            assert (dst.width, dst.height) == size
            assert all(dst.descriptions)
    geojson = json.loads((out / "cogeo.footprints.geojson").read_text())
    assert geojson["type"] == "FeatureCollection"
    for feature in geojson["features"]:
        assert feature["geometry"]["type"] in ("Polygon", "MultiPolygon")
    job = json.loads((out / "cogeo.job.json").read_text())
    assert job["state"] == "done"


def test_predict_writes_georeferenced_results(
    live: LiveServer, shared_data: Path, tmp_path: Path
) -> None:
    scene = shared_data / "cogeo.tif"
    proc = _attnserve(
        "predict", str(scene), "--model", "footprints", "--out", str(tmp_path), "--server", live.url
    )
    assert proc.returncode == 0, proc.stderr
    _check_outputs(tmp_path, scene)
    listed = dict(line.split("\t") for line in proc.stdout.splitlines())
    assert Path(listed["prediction_geotiff"]).is_file()


@pytest.mark.parametrize("plain", [False, True], ids=["tqdm", "plain"])
def test_async_predict_shows_a_progress_bar(
    live: LiveServer, shared_data: Path, tmp_path: Path, plain: bool
) -> None:
    scene = shared_data / "cogeo.tif"
    args = ["predict", str(scene), "--model", "footprints", "--out", str(tmp_path)]
    args += ["--server", live.url, "--async"]
    if plain:
        args.append("--plain-progress")
    proc = _attnserve(*args)
    assert proc.returncode == 0, proc.stderr
    assert "queued" in proc.stderr
    assert "cogeo.tif" in proc.stderr
    assert "100%" in proc.stderr
    _check_outputs(tmp_path, scene)


def test_predict_series_from_csv(live: LiveServer, tmp_path: Path) -> None:
    path = tmp_path / "parcels.csv"
    lines = ["id,date," + ",".join(BANDS)]
    for parcel, base in (("field-7", 300), ("field-8", 1500)):
        for month in (3, 4, 5, 6, 7):
            values = [str(base + 100 * month + 10 * b) for b in range(10)]
            lines.append(f"{parcel},2024-{month:02d}-15," + ",".join(values))
    path.write_text("\n".join(lines) + "\n")
    out = tmp_path / "answer.json"
    proc = _attnserve(
        "predict-series", str(path), "--model", "crops", "--server", live.url, "--out", str(out)
    )
    assert proc.returncode == 0, proc.stderr
    header, *rows = proc.stdout.splitlines()
    assert header.split("\t")[3:] == [f"2024-{m:02d}-15" for m in (3, 4, 5, 6, 7)]
    assert [r.split("\t")[0] for r in rows] == ["field-7", "field-8"]
    weights = [float(w) for w in rows[0].split("\t")[3:]]
    assert sum(weights) == pytest.approx(1.0, abs=0.01)
    answer = json.loads(out.read_text())
    assert len(answer["attention"][0]["items"][0]["weights"]) >= 1


def test_models_and_errors(live: LiveServer, tmp_path: Path) -> None:
    proc = _attnserve("models", "--server", live.url)
    assert proc.returncode == 0, proc.stderr
    names = [line.split("\t")[0] for line in proc.stdout.splitlines()]
    assert names == ["crops", "crops-mato-grosso", "footprints"]

    not_tiff = tmp_path / "notes.tif"
    not_tiff.write_text("hello")
    proc = _attnserve(
        "predict",
        str(not_tiff),
        "--model",
        "footprints",
        "--out",
        str(tmp_path),
        "--server",
        live.url,
    )
    assert proc.returncode == 1
    line = proc.stderr.strip()
    assert "\n" not in line
    assert line.startswith("attnserve: server answered 422 invalid_raster")
