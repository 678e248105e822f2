"""``attnserve manifest``: a plain ONNX file from another project, drafted, checked and served."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnxruntime as ort
import pytest
import rasterio
from rasterio.io import MemoryFile

from service.cli import main
from service.runtime.manifest import MANIFEST_KEY, Manifest, sidecar_path
from service.runtime.segmentation import upsample
from tests.helpers.geotiff import geotiff, noise
from tests.helpers.onnx_graphs import (
    WRONG_MANIFESTS,
    binary_segmenter,
    edited_draft,
    wrong_manifest,
)
from tests.helpers.server import serving


def _draft(model: Path, capsys: pytest.CaptureFixture[str]) -> tuple[dict[str, Any], str]:
    assert main(["manifest", "draft", str(model)]) == 0
    out = capsys.readouterr()
    return json.loads(out.out), out.err


def test_a_draft_is_printed_with_notes_on_what_to_edit(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    draft, notes = _draft(binary_segmenter(tmp_path / "roofs-2.1.onnx"), capsys)
    assert (draft["name"], draft["version"], draft["task"]) == ("roofs", "2.1", "segmentation")
    assert "edit input.bands" in notes
    assert Manifest.from_dict(draft).ref == "roofs:2.1"


@pytest.fixture
def drafted(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[Path, dict[str, Any]]:
    """A plain ``roofs.onnx`` and the manifest drafted for it."""
    model = binary_segmenter(tmp_path / "roofs.onnx")
    return model, _draft(model, capsys)[0]


def test_check_exits_non_zero_and_lists_what_disagrees(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], drafted: tuple[Path, dict[str, Any]]
) -> None:
    model, good = drafted
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps(wrong_manifest(good, "wrong-stride")))
    assert main(["manifest", "check", str(model), "--manifest", str(wrong)]) == 1
    out = capsys.readouterr().out
    assert out.startswith("roofs.onnx: wrong.json disagrees with the graph in 1 place:")
    assert "so its stride is 2, but the manifest's stride 1" in out
    # Without --manifest it checks what the server would serve: here, nothing.
    assert main(["manifest", "check", str(model)]) == 1
    assert "carries no manifest and no roofs.manifest.json" in capsys.readouterr().out
    sidecar_path(model).write_text(json.dumps(good))
    assert main(["manifest", "check", str(model)]) == 0
    assert capsys.readouterr().out == "roofs.onnx: roofs.manifest.json agrees with the graph\n"


def test_embed_writes_a_checked_manifest_into_the_metadata(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], drafted: tuple[Path, dict[str, Any]]
) -> None:
    out = tmp_path / "embedded.onnx"
    model, good = drafted
    manifest = tmp_path / "edited.json"
    manifest.write_text(json.dumps(wrong_manifest(good, "unknown-kind")))
    assert main(["manifest", "embed", str(model), "--manifest", str(manifest)]) == 1
    assert "unknown kind 'heatmap'" in capsys.readouterr().err
    manifest.write_text(json.dumps(edited_draft(good)))
    assert (
        main(["manifest", "embed", str(model), "--manifest", str(manifest), "--out", str(out)]) == 0
    )
    meta = ort.InferenceSession(str(out)).get_modelmeta().custom_metadata_map
    assert Manifest.from_json(meta[MANIFEST_KEY]).name == "roofs"
    assert main(["manifest", "check", str(out)]) == 0


def test_a_plain_onnx_file_serves_over_http_through_its_drafted_sidecar(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    models = tmp_path / "models"
    models.mkdir()
    model = binary_segmenter(models / "roofs.onnx")
    draft, _ = _draft(model, capsys)
    good = edited_draft(draft)
    sidecar_path(model).write_text(json.dumps(good, indent=2))
    for case in WRONG_MANIFESTS:
        binary_segmenter(models / f"{case}.onnx")
        sidecar_path(models / f"{case}.onnx").write_text(json.dumps(wrong_manifest(good, case)))
    image = noise(3, 48, seed=3)
    with serving(models, tmp_path) as live:
        ready = httpx.get(f"{live.url}/readyz", timeout=10)
        assert ready.status_code == 200
        body = ready.json()
        assert list(body["models"]) == ["roofs:1.0.0"]
        skipped = {s["file"]: s["reason"] for s in body["skipped"]}
        assert sorted(skipped) == sorted(f"{case}.onnx" for case in WRONG_MANIFESTS)
        for case, (_, words) in WRONG_MANIFESTS.items():
            assert skipped[f"{case}.onnx"].startswith(f"{case}.manifest.json: "), skipped
            assert words in skipped[f"{case}.onnx"], (case, skipped)
        resp = httpx.post(
            f"{live.url}/predict",
            data={"model": "roofs"},
            files={"image": ("tile.tif", geotiff(image), "image/tiff")},
            timeout=60,
        )
        assert resp.status_code == 200, resp.text
        answer = resp.json()
        attention = {layer["name"]: layer for layer in answer["attention"]}
        assert attention["attention"]["stride"] == 2
        tif = httpx.get(f"{live.url}/jobs/{answer['job_id']}/prediction?format=geotiff", timeout=60)
        assert tif.status_code == 200, tif.text
    with MemoryFile(tif.content) as mem, mem.open() as ds:
        served = ds.read()
        descriptions = ds.descriptions
        assert ds.crs == rasterio.crs.CRS.from_epsg(32631)
    # The served bands are the graph's own outputs on the upload.
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    probability, gate = session.run(None, {"image": image[None].astype(np.float32)})
    assert [d.split(" ")[0] for d in descriptions] == ["probability", "attention"]
    np.testing.assert_allclose(served[0], probability[0, 0], atol=1e-6)
    # The half-resolution map comes back upsampled to the upload's grid.
    assert gate.shape == (1, 1, 24, 24)
    np.testing.assert_allclose(served[1], upsample(gate[0, 0], 2, 48, 48), atol=1e-6)
