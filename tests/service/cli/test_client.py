"""The attnserve command against a live server: models, a series file, a scene."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from service.cli import build_parser, main
from tests.helpers.bodies import parcels
from tests.helpers.geotiff import noise, write_geotiff
from tests.helpers.server import LiveServer


def test_models_are_listed_one_a_line(live: LiveServer, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "--server", live.url]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = {line.split("\t")[0]: line.split("\t") for line in lines}
    assert rows["footprints"][2] == "segmentation"
    assert "gate_1" in rows["footprints"][3]


def test_a_json_series_file_is_classified_and_saved(
    live: LiveServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    body = parcels(np.full((2, 3, 10), 1500.0), days=[60.0, 90.0, 120.0])
    request = tmp_path / "parcels.json"
    request.write_text(json.dumps(body))
    out = tmp_path / "answer.json"
    code = main(["predict-series", str(request), "--model", "crops", "--server", live.url,
                 "--out", str(out)])  # fmt: skip
    assert code == 0
    answer = json.loads(out.read_text())
    assert [item["id"] for item in answer["prediction"]["items"]] == ["p0", "p1"]
    printed = capsys.readouterr().out
    assert "p0" in printed
    assert "p1" in printed


def test_a_scene_is_predicted_and_its_files_downloaded(live: LiveServer, tmp_path: Path) -> None:
    scene = write_geotiff(tmp_path / "tile.tif", noise(3, 64))
    out = tmp_path / "out"
    code = main(["predict", str(scene), "--model", "footprints", "--out", str(out),
                 "--server", live.url])  # fmt: skip
    assert code == 0
    assert any(p.suffix == ".tif" for p in out.iterdir())


def test_a_command_is_required() -> None:
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args([])
    assert exited.value.code == 2
