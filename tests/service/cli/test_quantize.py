"""``attnserve quantize``: an INT8 copy calibrated on real images, served like any model."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from rasterio.io import MemoryFile

from service.cli import main
from service.runtime.manifest import MANIFEST_KEY, PRECISION_KEY, Manifest, sidecar_path
from service.runtime.manifest_draft import draft_manifest
from service.runtime.repository import BatchLimits, ModelRepository
from service.runtime.session import SessionOptions
from tests.helpers.bodies import upload
from tests.helpers.geotiff import geotiff, noise
from tests.helpers.onnx_graphs import binary_segmenter, edited_draft
from tests.helpers.server import serving

REPO = Path(__file__).resolve().parents[3]
DUBAI = REPO.parent / "shared" / "data" / "footprints" / "dubai"
SHIPPED = REPO / "models" / "shipped"


@pytest.fixture
def calibration(tmp_path: Path) -> Path:
    """Three real Dubai images to calibrate on (Tile 1) and one to hold out (Tile 8)."""
    root = tmp_path / "calibration"
    for tile, parts in (("Tile 1", (1, 4, 7)), ("Tile 8", (2,))):
        folder = root / tile
        folder.mkdir(parents=True)
        for part in parts:
            name = f"image_part_{part:03d}.jpg"
            (folder / name).symlink_to(DUBAI / tile / "images" / name)
    return root


def _roofs(folder: Path) -> Path:
    """A plain segmenter from another project with its edited drafted sidecar manifest."""
    folder.mkdir(parents=True, exist_ok=True)
    model = binary_segmenter(folder / "roofs.onnx")
    sidecar_path(model).write_text(json.dumps(edited_draft(draft_manifest(model).manifest)))
    return model


def test_a_copy_records_its_precision_and_what_it_lost_on_held_out_images(
    tmp_path: Path, calibration: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = _roofs(tmp_path / "src")
    out = tmp_path / "models" / "roofs.onnx"
    assert main(["quantize", str(src), "--calibration", str(calibration), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "calibrated on 3 images; on 1 held out: pixel IoU vs float32" in printed

    model = onnx.load(str(out))
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta[PRECISION_KEY] == "int8"
    manifest = Manifest.from_json(meta[MANIFEST_KEY])
    assert (manifest.ref, manifest.precision) == ("roofs:1.0.0", "int8")
    q = manifest.quantization
    assert (q["calibration_images"], q["holdout_images"], q["holdout"]) == (3, 1, ["Tile 8"])
    assert q["float32_nodes"] == []
    assert set(q["mean_abs_diff"]) == {"probability", "attention"}
    assert all(0 <= v < 0.05 for v in q["mean_abs_diff"].values()), q
    assert 0.9 <= q["pixel_iou_vs_float32"] <= 1.0
    ops = {n.op_type for n in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert onnx.TensorProto.INT8 in {i.data_type for i in model.graph.initializer}
    # Inputs and outputs stay float32: requests and the job store are unchanged.
    assert [v.type.tensor_type.elem_type for v in model.graph.output] == [
        onnx.TensorProto.FLOAT
    ] * 2

    # The model repository serves it like any model.
    async def load() -> tuple[str, str]:
        options = SessionOptions(providers=("CPUExecutionProvider",), intra_op_threads=1)
        repo = ModelRepository(out.parent, options, lambda _m: BatchLimits(4, 1.0, 16))
        await repo.load()
        try:
            served = repo.get("roofs")
            return served.session.precision, served.session.manifest.precision
        finally:
            await repo.stop(5)

    assert asyncio.run(load()) == ("int8", "int8")

    image = noise(3, 48, seed=5)
    with serving(out.parent, tmp_path) as live:
        described = httpx.get(f"{live.url}/models/roofs", timeout=10).json()
        assert described["precision"] == "int8"
        assert described["quantization"] == json.loads(json.dumps(manifest.quantization))
        resp = httpx.post(f"{live.url}/predict", **upload(geotiff(image), "roofs"), timeout=60)
        assert resp.status_code == 200, resp.text
        job = resp.json()["job_id"]
        tif = httpx.get(f"{live.url}/jobs/{job}/prediction?format=geotiff", timeout=60)
        assert tif.status_code == 200, tif.text
    with MemoryFile(tif.content) as mem, mem.open() as ds:
        served = ds.read(1)
    # The served probability is the INT8 graph's, close to the float32 original's.
    reference = ort.InferenceSession(str(src), providers=["CPUExecutionProvider"])
    probability, _ = reference.run(None, {"image": image[None].astype(np.float32)})
    assert float(np.abs(served - probability[0, 0]).mean()) < 0.05


def test_gates_kept_in_float32_are_listed(
    tmp_path: Path, calibration: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = _roofs(tmp_path / "src")
    out = tmp_path / "roofs-partial.onnx"
    args = ["quantize", str(src), "--calibration", str(calibration), "--out", str(out)]
    assert main([*args, "--keep-float", "Sigmoid"]) == 0
    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    kept = Manifest.from_json(meta[MANIFEST_KEY]).quantization["float32_nodes"]
    assert len(kept) == 2
    assert all(name.startswith("Sigmoid") for name in kept)
    assert main([*args, "--keep-float", "no-such-node"]) == 1
    assert "no node's name or operator contains any of no-such-node" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("model", "calibration_dir", "words"),
    [
        ("crops-1.0.0.onnx", "calibration", "is a temporal_classification model"),
        ("footprints-2.2.0.onnx", "empty", "holds 0 image(s)"),
        ("footprints-2.2.0.onnx", "missing", "is not a directory of images"),
    ],
)
def test_what_cannot_be_quantised_is_refused_in_one_line(
    tmp_path: Path,
    calibration: Path,
    capsys: pytest.CaptureFixture[str],
    model: str,
    calibration_dir: str,
    words: str,
) -> None:
    (tmp_path / "empty").mkdir()
    out = tmp_path / "out.onnx"
    code = main(["quantize", str(SHIPPED / model), "--calibration",
                 str(tmp_path / calibration_dir), "--out", str(out)])  # fmt: skip
    assert code == 1
    err = capsys.readouterr().err
    assert err.startswith("attnserve: quantize: ")
    assert words in err
    assert not out.exists()
