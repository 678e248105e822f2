"""``attnserve train footprints`` end to end on the tiny config, then export."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from rasterio.warp import transform

from models.export import read_manifest
from service.cli import main

IMAGE = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "geotiff" / "RGB.byte.tif"
METRICS = {"pixel_iou", "building_f1", "precision", "recall"}


def test_tiny_synthetic_run_trains_and_exports(tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert main(["train", "footprints", "--tiny", "--forest", "0.5", "--out", str(out)]) == 0
    ckpt = out / "footprints.pt"
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) >= METRICS
    assert all(0.0 <= metrics[k] <= 1.0 for k in METRICS)

    saved = torch.load(ckpt, map_location="cpu", weights_only=False)
    assert saved["family"] == "footprints"
    assert saved["training"]["steps"] == 3
    assert saved["training"]["threads"] >= 1
    assert saved["training"]["wall_time_s"] >= 0

    onnx_path = tmp_path / "tiny.onnx"
    assert main(["export", str(ckpt), "--out", str(onnx_path), "--version", "0.1.0"]) == 0
    manifest = read_manifest(onnx_path)
    assert manifest.ref == "footprints:0.1.0"
    assert manifest.training["seed"] == 0
    assert "forest 0.5" in manifest.training["data"]
    assert set(manifest.metrics) >= METRICS


def test_same_seed_gives_same_model(tmp_path: Path) -> None:
    for name in ("a", "b"):
        assert (
            main(["train", "footprints", "--tiny", "--seed", "5", "--out", str(tmp_path / name)])
            == 0
        )
    a = torch.load(tmp_path / "a" / "footprints.pt", weights_only=False)["state_dict"]
    b = torch.load(tmp_path / "b" / "footprints.pt", weights_only=False)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.skipif(not IMAGE.exists(), reason="shared GeoTIFF data not present")
def test_tiny_run_on_a_real_geotiff_with_footprints(tmp_path: Path) -> None:
    # Two footprints: one in the training part, one in the held-out bottom rows.
    with rasterio.open(IMAGE) as src:
        features = []
        for r0, c0 in ((100, 300), (650, 330)):
            cols, rows = [c0, c0 + 40, c0 + 40, c0, c0], [r0, r0, r0 + 30, r0 + 30, r0]
            xs, ys = rasterio.transform.xy(src.transform, rows, cols, offset="ul")
            lon, lat = transform(src.crs, "EPSG:4326", xs, ys)
            ring = [[x, y] for x, y in zip(lon, lat, strict=True)]
            features.append(
                {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [ring]}}
            )
    labels = tmp_path / "footprints.geojson"
    labels.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    out = tmp_path / "real"
    argv = ["train", "footprints", "--tiny", "--image", str(IMAGE), "--labels", str(labels)]
    assert main([*argv, "--out", str(out)]) == 0
    training = torch.load(out / "footprints.pt", weights_only=False)["training"]
    assert "RGB.byte.tif" in training["data"]
    assert "bottom" in training["held_out"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["buildings"] == 1.0  # only the held-out footprint is scored


def test_image_without_labels_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="go together"):
        main(["train", "footprints", "--tiny", "--image", str(IMAGE), "--out", str(tmp_path)])


def test_non_8bit_image_is_refused(tmp_path: Path) -> None:
    image = tmp_path / "uint16.tif"
    profile = {"driver": "GTiff", "width": 64, "height": 64, "count": 3, "dtype": "uint16"}
    transform_ = rasterio.transform.from_origin(500000.0, 4000000.0, 1.0, 1.0)
    with rasterio.open(image, "w", crs="EPSG:32618", transform=transform_, **profile) as dst:
        dst.write(np.full((3, 64, 64), 1000, dtype=np.uint16))
    ring = [[500010.0, 3999990.0], [500030.0, 3999990.0], [500030.0, 3999970.0]]
    crs = {"type": "name", "properties": {"name": "EPSG:32618"}}
    geometry = {"type": "Polygon", "coordinates": [[*ring, ring[0]]]}
    labels = tmp_path / "labels.geojson"
    labels.write_text(json.dumps({"type": "Feature", "geometry": geometry, "crs": crs}))
    argv = ["train", "footprints", "--tiny", "--image", str(image), "--labels", str(labels)]
    with pytest.raises(SystemExit, match="uint16; the footprints model takes uint8"):
        main([*argv, "--out", str(tmp_path / "out")])
