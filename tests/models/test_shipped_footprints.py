"""The shipped demo model: loads in ONNX Runtime, describes itself, meets its targets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from models.data.buildings import make_batch
from models.export import read_manifest
from models.metrics import footprint_scores

SHIPPED = Path(__file__).resolve().parents[2] / "models" / "shipped" / "footprints-1.1.0.onnx"
# Training used seed 0 for its scenes and 1_000_003 for its held-out scenes.
TEST_SEED = 20_240_611
TILES, SIZE = 32, 256


@pytest.fixture(scope="module")
def session() -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    return ort.InferenceSession(str(SHIPPED), options, providers=["CPUExecutionProvider"])


def test_shipped_file_is_small_enough_to_ship() -> None:
    assert SHIPPED.stat().st_size <= 20 * 1024 * 1024


def test_manifest_describes_the_model() -> None:
    manifest = read_manifest(SHIPPED)
    assert manifest.ref == "footprints:1.1.0"
    assert manifest.task == "segmentation"
    assert manifest.classes == ["building"]
    assert manifest.input.bands == ["red", "green", "blue"]
    assert manifest.input.accepted_dtypes == ["uint8"]
    assert manifest.input.value_range == [0.0, 255.0]
    assert manifest.input.normalization.applied == "in_graph"
    assert manifest.input.size_multiple == 16
    assert manifest.prediction.name == "probability"
    assert [o.name for o in manifest.attention] == [
        "gate_1",
        "gate_2",
        "gate_3",
        "gate_4",
        "band_weights",
    ]
    # Gates come at the resolution of their skip connection (the server upsamples).
    assert {o.name: o.stride for o in manifest.outputs} == {
        "probability": 1,
        "gate_1": 1,
        "gate_2": 2,
        "gate_3": 4,
        "gate_4": 8,
        "band_weights": 1,
    }
    assert manifest.training["wall_time_s"] <= 15 * 60
    assert manifest.metrics["pixel_iou"] >= 0.85
    assert manifest.metrics["building_f1"] >= 0.80


def test_meets_targets_on_fresh_held_out_scenes(session: ort.InferenceSession) -> None:
    images, masks = make_batch(np.random.default_rng(TEST_SEED), TILES, SIZE)
    preds = []
    for i in range(0, TILES, 8):
        batch = images[i : i + 8].astype(np.float32)
        outs = session.run(None, {"image": batch, "band_mean": batch.mean(axis=(2, 3))})
        probability, *gates, band_weights = outs
        for level, gate in enumerate(gates, start=1):
            stride = 2 ** (level - 1)
            assert gate.shape == (len(batch), 1, SIZE // stride, SIZE // stride)
        assert band_weights.shape == (len(probability), 3)
        preds.append(probability[:, 0] >= 0.5)
    scores = footprint_scores(np.concatenate(preds), masks.astype(bool))
    assert scores["pixel_iou"] >= 0.85, scores
    assert scores["building_f1"] >= 0.80, scores
