"""`attnserve train crops` end to end, and the metrics it reports."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from models.data.crop_npz import write_crop_npz
from models.data.crops import CLASS_NAMES, CropSeries, make_crop_series
from models.export import load_checkpoint, read_manifest
from models.train.crops import classification_metrics, cloud_attention_ratio
from service.cli import main


def test_tiny_synthetic_training_then_export(tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert main(["train", "crops", "--tiny", "--out", str(out), "--threads", "1"]) == 0
    ckpt = load_checkpoint(out / "crops.pt")
    assert ckpt["family"] == "crops"
    assert ckpt["training"]["threads"] == 1
    assert ckpt["training"]["wall_time_s"] >= 0
    report = json.loads((out / "metrics.json").read_text())
    for key in ("overall_accuracy", "kappa", "macro_f1", "cloud_attention_ratio"):
        assert key in report["metrics"]
    onnx_path = tmp_path / "crops.onnx"
    assert main(["export", str(out / "crops.pt"), "--out", str(onnx_path)]) == 0
    manifest = read_manifest(onnx_path)
    assert manifest.ref == "crops:1.0.0"
    assert manifest.classes == list(CLASS_NAMES)
    assert manifest.metrics["overall_accuracy"] == report["metrics"]["overall_accuracy"]
    assert manifest.training["seed"] == 0


def test_same_seed_trains_the_same_weights(tmp_path: Path) -> None:
    for name in ("a", "b"):
        args = ["train", "crops", "--tiny", "--seed", "5", "--threads", "1"]
        assert main([*args, "--out", str(tmp_path / name)]) == 0
    a = load_checkpoint(tmp_path / "a" / "crops.pt")["state_dict"]
    b = load_checkpoint(tmp_path / "b" / "crops.pt")["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_training_on_a_real_data_file_uses_its_classes(tmp_path: Path) -> None:
    synthetic = make_crop_series(150, seed=9)
    renamed = CropSeries(
        series=synthetic.series,
        days=synthetic.days,
        valid=synthetic.valid,
        labels=synthetic.labels,
        class_names=tuple(f"crop_{k}" for k in range(len(CLASS_NAMES))),
    )
    data = tmp_path / "parcels.npz"
    write_crop_npz(data, renamed)
    out = tmp_path / "run"
    args = ["train", "crops", "--tiny", "--data", str(data), "--out", str(out)]
    assert main([*args, "--name", "my-crops", "--version", "2.0"]) == 0
    report = json.loads((out / "metrics.json").read_text())
    assert report["metrics"]["held_out_samples"] == 30  # 20 % of 150, at random: no lonlat
    assert "random samples held out" in report["training"]["data"]
    # Real data gets its clouds injected into the held-out series to measure them.
    for key in ("cloud_attention_ratio", "cloudy_overall_accuracy", "cloudy_macro_f1"):
        assert key in report["metrics"]
    assert report["training"]["cloud_probability"] == 0.25
    assert "parcels.npz" in report["training"]["data"]
    onnx_path = tmp_path / "mine.onnx"
    assert main(["export", str(out / "crops.pt"), "--out", str(onnx_path)]) == 0
    manifest = read_manifest(onnx_path)
    assert manifest.ref == "my-crops:2.0"
    assert manifest.classes == list(renamed.class_names)


def test_cloud_attention_ratio_compares_length_normalised_weights() -> None:
    # One head per series; series 0 has 4 valid dates, one of them an unflagged
    # cloud; series 1 has a flagged cloud (invalid) which must not count.
    attention = np.array([[[0.1, 0.3, 0.3, 0.3]], [[0.0, 0.5, 0.5, 0.0]]])
    valid = np.array([[True, True, True, True], [False, True, True, False]])
    cloudy = np.array([[True, False, False, False], [True, False, False, False]])
    assert cloud_attention_ratio(attention, valid, cloudy) == pytest.approx(0.1 / 0.3)
    # Without any unflagged cloud there is nothing to measure.
    assert np.isnan(cloud_attention_ratio(attention, valid, cloudy & ~valid))


def test_classification_metrics_on_a_known_confusion() -> None:
    labels = np.array([0, 0, 1, 1, 2, 2])
    predicted = np.array([0, 0, 1, 0, 2, 2])
    m = classification_metrics(labels, predicted, ["a", "b", "c"])
    assert m["overall_accuracy"] == pytest.approx(5 / 6)
    assert m["f1_b"] == pytest.approx(2 / 3)
    assert m["f1_a"] == pytest.approx(0.8)
    assert m["kappa"] == pytest.approx((5 / 6 - 1 / 3) / (1 - 1 / 3))
