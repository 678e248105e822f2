"""Exporting the crops model: ONNX Runtime on CPU gives what torch gives."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from models.data.crops import BANDS
from models.export import OPSET, build_model, export_checkpoint, load_checkpoint, read_manifest
from models.ltae import build
from models.train.common import save_checkpoint
from service.runtime.manifest import Manifest

CLASSES = ["wheat", "maize", "grass", "rapeseed", "sunflower"]
HEADS = 4


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Manifest]:
    folder = tmp_path_factory.mktemp("crops_export")
    torch.manual_seed(1)
    config = {
        "name": "crops",
        "version": "0.0.1",
        "class_names": CLASSES,
        "heads": HEADS,
        "d_model": 32,
        "band_mean": [float(v) for v in np.linspace(500, 3000, len(BANDS))],
        "band_std": [float(v) for v in np.linspace(300, 1200, len(BANDS))],
    }
    ckpt = folder / "crops.pt"
    save_checkpoint(
        ckpt,
        family="crops",
        config=config,
        model=build(config),
        metrics={"overall_accuracy": 0.2},
        training={"seed": 1},
    )
    onnx_path = folder / "crops.onnx"
    return ckpt, onnx_path, export_checkpoint(ckpt, onnx_path)


def _inputs(batch: int, dates: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    valid = rng.uniform(size=(batch, dates)) > 0.25
    valid[:, 0] = True
    return {
        "series": rng.uniform(0, 8000, size=(batch, dates, len(BANDS))).astype(np.float32),
        "days": np.sort(rng.integers(0, 420, size=(batch, dates)), axis=1).astype(np.float32),
        "valid": valid,
    }


@pytest.mark.parametrize("batch", [1, 8])
@pytest.mark.parametrize("dates", [1, 5, 37, 64])
def test_onnx_runtime_matches_torch(
    exported: tuple[Path, Path, Manifest], batch: int, dates: int
) -> None:
    ckpt, onnx_path, _ = exported
    model = build_model(load_checkpoint(ckpt))
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    feeds = _inputs(batch, dates, seed=batch * 100 + dates)
    probabilities, attention = session.run(["probabilities", "attention"], feeds)
    with torch.no_grad():
        want_p, want_a = model(*(torch.from_numpy(feeds[k]) for k in ("series", "days", "valid")))
    np.testing.assert_allclose(probabilities, want_p.numpy(), atol=1e-4, rtol=0)
    np.testing.assert_allclose(attention, want_a.numpy(), atol=1e-4, rtol=0)
    assert attention.shape == (batch, HEADS, dates)
    assert np.all(attention[np.broadcast_to(~feeds["valid"][:, None], attention.shape)] == 0)


def test_onnx_output_stays_finite_without_valid_dates_or_with_nan_on_invalid_ones(
    exported: tuple[Path, Path, Manifest],
) -> None:
    _, onnx_path, _ = exported
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    feeds = _inputs(2, 6, seed=7)
    feeds["valid"][1] = False
    # NaN nodata on dates marked invalid must not leak into the answer.
    feeds["valid"][0, 3] = False
    feeds["series"][:, 3] = np.nan
    feeds["days"][1, 2] = np.nan
    probabilities, attention = session.run(None, feeds)
    assert np.isfinite(probabilities).all()
    assert np.isfinite(attention).all()
    assert np.all(attention[1] == 0)
    np.testing.assert_allclose(attention[0].sum(-1), 1.0, atol=1e-5)


def test_exported_file_carries_its_manifest_and_dynamic_axes(
    exported: tuple[Path, Path, Manifest],
) -> None:
    _, onnx_path, written = exported
    assert read_manifest(onnx_path) == written
    assert written.ref == "crops:0.0.1"
    assert written.classes == CLASSES
    assert written.metrics == {"overall_accuracy": 0.2}
    proto = onnx.load(str(onnx_path))
    assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) >= OPSET
    assert OPSET >= 17
    inputs = {i.name: i.type.tensor_type for i in proto.graph.input}
    assert list(inputs) == ["series", "days", "valid"]
    assert inputs["valid"].elem_type == onnx.TensorProto.BOOL
    dims = [d.dim_param for d in inputs["series"].shape.dim[:2]]
    assert all(dims), "batch and dates must be symbolic"
