"""``attnserve train footprints`` end to end on the tiny config, then export."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import rasterio
import torch
from rasterio.warp import transform

from models.export import read_manifest
from service.cli import main

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"
IMAGE = SHARED / "geotiff" / "RGB.byte.tif"
DUBAI = SHARED / "footprints" / "dubai"
NEGATIVES = SHARED / "footprints" / "negatives"
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


def test_a_bf16_run_keeps_float32_weights_and_exports(tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert main(["train", "footprints", "--tiny", "--bf16", "--out", str(out)]) == 0
    saved = torch.load(out / "footprints.pt", map_location="cpu", weights_only=False)
    assert saved["training"]["precision"] == "bfloat16 autocast"
    assert {t.dtype for t in saved["state_dict"].values() if t.is_floating_point()} == {
        torch.float32
    }
    onnx_path = tmp_path / "bf16.onnx"
    assert main(["export", str(out / "footprints.pt"), "--out", str(onnx_path)]) == 0
    assert read_manifest(onnx_path).training["precision"] == "bfloat16 autocast"


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
    with pytest.raises(SystemExit, match="either --labels"):
        main(["train", "footprints", "--tiny", "--image", str(IMAGE), "--out", str(tmp_path)])


def test_labels_without_an_image_are_refused(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="need --image"):
        main(["train", "footprints", "--tiny", "--mask", str(IMAGE), "--out", str(tmp_path)])


def _uint16_rgbn(tmp_path: Path) -> tuple[Path, Path]:
    """A 4-band uint16 GeoTIFF (0..10000) with bright squares, and a 0/255 mask GeoTIFF."""
    rng = np.random.default_rng(0)
    mask = np.zeros((96, 96), np.uint8)
    for y, x in rng.integers(0, 80, (12, 2)):
        mask[y : y + 12, x : x + 12] = 255
    image = np.where(mask > 0, 8000, 1500).astype(np.uint16)[None].repeat(4, axis=0)
    image += rng.integers(0, 300, image.shape, dtype=np.uint16)
    transform_ = rasterio.transform.from_origin(500000.0, 4000000.0, 0.3, 0.3)
    common = {"driver": "GTiff", "width": 96, "height": 96, "crs": "EPSG:32618"}
    paths = tmp_path / "rgbn.tif", tmp_path / "rgbn_mask.tif"
    with rasterio.open(paths[0], "w", count=4, dtype="uint16", transform=transform_, **common) as d:
        d.write(image)
    with rasterio.open(paths[1], "w", count=1, dtype="uint8", transform=transform_, **common) as d:
        d.write(mask[None])
    return paths


def test_uint16_rgbn_image_with_a_value_mask_trains_and_describes_its_bands(
    tmp_path: Path,
) -> None:
    image, mask = _uint16_rgbn(tmp_path)
    argv = ["train", "footprints", "--tiny", "--image", str(image), "--mask", str(mask)]
    argv += ["--mask-value", "255", "--out", str(tmp_path / "run")]
    with pytest.raises(SystemExit, match="uint16 imagery needs --value-range"):
        main(argv)
    assert main([*argv, "--value-range", "0 10000"]) == 0
    onnx_path = tmp_path / "rgbn.onnx"
    assert main(["export", str(tmp_path / "run" / "footprints.pt"), "--out", str(onnx_path)]) == 0
    manifest = read_manifest(onnx_path)
    assert manifest.input.bands == ["red", "green", "blue", "nir"]
    assert manifest.input.accepted_dtypes == ["uint16"]
    assert manifest.input.value_range == [0.0, 10000.0]
    assert manifest.input.gsd_m == pytest.approx(0.3)  # from the GeoTIFF's transform
    # The normalisation is the data's: bright squares on dark ground, in uint16 units.
    assert all(1500 < m < 8300 for m in manifest.input.normalization.mean)
    assert "bottom" in manifest.training["held_out"]


def _two_dubai_tiles(tmp_path: Path) -> Path:
    """A folder of the first image of Dubai ``Tile 1`` and ``Tile 2`` (palette masks)."""
    data = tmp_path / "dubai"
    for tile in ("Tile 1", "Tile 2"):
        for sub, suffix in (("images", ".jpg"), ("masks", ".png")):
            (data / tile / sub).mkdir(parents=True)
            src = DUBAI / tile / sub / f"image_part_001{suffix}"
            (data / tile / sub / src.name).symlink_to(src)
    return data


@pytest.mark.skipif(not DUBAI.exists(), reason="shared footprints data not present")
def test_tiny_run_on_real_folders_holds_out_whole_groups(tmp_path: Path) -> None:
    # Two small Dubai tiles (one with palette masks), a forest negative in each split.
    data = _two_dubai_tiles(tmp_path)
    out = tmp_path / "run"
    argv = ["train", "footprints", "--tiny", "--data", str(data), "--mask-color", "#3C1098"]
    argv += [
        "--negatives",
        str(NEGATIVES / "SOAP_031.png"),
        "--negatives",
        str(NEGATIVES / "SOAP_061.png"),
    ]
    argv += [
        "--holdout",
        "Tile 1",
        "--holdout",
        "SOAP_061",
        "--gsd",
        "0.5",
        "--synthetic-ratio",
        "0.3",
    ]
    assert main([*argv, "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) >= METRICS | {"gate_1_ratio", "gate_4_ratio", "negative_building_fraction"}
    training = torch.load(out / "footprints.pt", weights_only=False)["training"]
    assert training["held_out"] == "whole groups SOAP_061, Tile 1"
    assert "groups Tile 2" in training["data"]
    assert "mixed with 30% synthetic tiles" in training["data"]
    assert "negatives SOAP_031" in training["data"]
    assert "SOAP_061" not in training["data"]
    onnx_path = tmp_path / "dubai.onnx"
    assert main(["export", str(out / "footprints.pt"), "--out", str(onnx_path)]) == 0
    manifest = read_manifest(onnx_path)
    assert manifest.input.gsd_m == 0.5
    assert manifest.input.bands == ["red", "green", "blue"]
    assert manifest.input.accepted_dtypes == ["uint8"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--holdout", "Tile 9"], "'Tile 9' not found; groups are 'Tile 1', 'Tile 2'"),
        (["--mask-color", "#3C1098", "--mask-value", "3"], "not both"),
        ([], "need --mask-value"),
        (["--context", "-1"], "--context is a count of blocks, 0 or more; got -1"),
        (["--aux-class", "road=#3C1098"], "'road=#3C1098' is the building class itself"),
        (["--aux-class", "road=grey"], "'road=grey': mask colour 'grey' is neither"),
        (["--aux-class", "a=#6EC1E4", "--aux-class", "a=#FEDD3A"], "names must differ"),
        (["--aux-class", "road=#6EC1E4", "--aux-loss", "-1"], "--aux-loss is a weight"),
    ],
)
def test_bad_real_data_options_are_refused_clearly(
    tmp_path: Path, extra: list[str], message: str
) -> None:
    if not DUBAI.exists():
        pytest.skip("shared footprints data not present")
    data = tmp_path / "d"
    for tile in ("Tile 1", "Tile 2"):
        (data / tile / "images").mkdir(parents=True)
        (data / tile / "masks").mkdir(parents=True)
        (data / tile / "images" / "a.jpg").symlink_to(
            DUBAI / tile / "images" / "image_part_001.jpg"
        )
        (data / tile / "masks" / "a.png").symlink_to(DUBAI / tile / "masks" / "image_part_001.png")
    argv = ["train", "footprints", "--tiny", "--data", str(data), "--out", str(tmp_path / "o")]
    if "--mask-color" not in extra and extra:
        extra = [*extra, "--mask-color", "#3C1098"]
    with pytest.raises(SystemExit, match=message):
        main([*argv, *extra])


@pytest.mark.skipif(not DUBAI.exists(), reason="shared footprints data not present")
def test_one_group_of_several_images_holds_out_its_last_image_whole(tmp_path: Path) -> None:
    data = tmp_path / "tile"
    for sub, suffix in (("images", ".jpg"), ("masks", ".png")):
        (data / "group" / sub).mkdir(parents=True)
        for part in ("001", "002"):
            src = DUBAI / "Tile 2" / sub / f"image_part_{part}{suffix}"
            (data / "group" / sub / src.name).symlink_to(src)
    out = tmp_path / "run"
    argv = ["train", "footprints", "--tiny", "--data", str(data), "--mask-color", "#3C1098"]
    assert main([*argv, "--out", str(out)]) == 0
    training = torch.load(out / "footprints.pt", weights_only=False)["training"]
    assert training["held_out"] == "the whole image image_part_002 of the only group, group"
    assert training["data"] == "1 real image (groups group), no synthetic tiles"
    assert "pixel_iou" in json.loads((out / "metrics.json").read_text())


@pytest.mark.skipif(not DUBAI.exists(), reason="shared footprints data not present")
def test_a_model_trained_on_a_coarser_grid_records_it_and_is_scored_on_it(tmp_path: Path) -> None:
    data = _two_dubai_tiles(tmp_path)
    out = tmp_path / "run"
    argv = ["train", "footprints", "--tiny", "--data", str(data), "--mask-color", "#3C1098"]
    argv += ["--holdout", "Tile 1", "--gsd", "0.5", "--model-gsd", "1.0", "--scale", "0.8 1.25"]
    assert main([*argv, "--out", str(out)]) == 0
    training = torch.load(out / "footprints.pt", weights_only=False)["training"]
    # Source pixels per model pixel: the range moved by 1.0 / 0.5.
    assert training["scale"] == [1.6, 2.5]
    assert {"pixel_iou", "gate_4_ratio"} <= set(json.loads((out / "metrics.json").read_text()))
    onnx_path = tmp_path / "coarse.onnx"
    assert main(["export", str(out / "footprints.pt"), "--out", str(onnx_path)]) == 0
    assert read_manifest(onnx_path).input.gsd_m == 1.0


def test_a_model_grid_needs_the_data_resolution(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="--model-gsd needs the data's --gsd"):
        main(["train", "footprints", "--tiny", "--model-gsd", "1.0", "--out", str(tmp_path)])


def test_a_depth_the_exporter_does_not_take_is_said_before_training(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["train", "footprints", "--tiny", "--depth", "3", "--out", str(tmp_path)]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first == (
        "note: a depth-3 model trains and is scored, but `attnserve export` takes depth-4 "
        "footprints models only"
    )


def test_a_run_with_context_blocks_exports_them_and_says_so(tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = ["train", "footprints", "--tiny", "--context", "2", "--out", str(out)]
    assert main(args) == 0
    onnx_path = tmp_path / "context.onnx"
    assert main(["export", str(out / "footprints.pt"), "--out", str(onnx_path)]) == 0
    manifest = read_manifest(onnx_path)
    assert manifest.training["network"] == (
        "Attention U-Net, width 4, depth 4, 2 dilated context blocks"
    )
    graph = onnx.load(str(onnx_path)).graph
    dilations = {
        tuple(a.ints)
        for n in graph.node
        if n.op_type == "Conv"
        for a in n.attribute
        if a.name == "dilations"
    }
    assert {(2, 2), (4, 4)} <= dilations
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    image = np.random.default_rng(0).uniform(0, 255, (1, 3, 64, 64)).astype(np.float32)
    probability = session.run(["probability"], {"image": image, "band_mean": image.mean((2, 3))})
    assert probability[0].shape == (1, 1, 64, 64)


@pytest.mark.skipif(not DUBAI.exists(), reason="shared footprints data not present")
def test_other_mask_classes_train_a_second_head_that_the_export_leaves_out(
    tmp_path: Path,
) -> None:
    data = _two_dubai_tiles(tmp_path)
    out = tmp_path / "run"
    argv = ["train", "footprints", "--tiny", "--data", str(data), "--mask-color", "#3C1098"]
    argv += ["--holdout", "Tile 1", "--aux-class", "land=#8429F6", "--aux-class", "road=#6EC1E4"]
    assert main([*argv, "--aux-loss", "0.3", "--out", str(out)]) == 0
    ckpt = torch.load(out / "footprints.pt", weights_only=False)
    assert ckpt["config"]["aux_classes"] == ["land", "road"]
    assert ckpt["state_dict"]["aux_head.weight"].shape[0] == 3  # land, road, none of them
    assert ckpt["training"]["loss"].endswith("+ 0.3 x auxiliary cross-entropy over land, road")
    onnx_path = tmp_path / "aux.onnx"
    assert main(["export", str(out / "footprints.pt"), "--out", str(onnx_path)]) == 0
    graph = onnx.load(str(onnx_path)).graph
    assert [o.name for o in graph.output] == [
        "probability",
        "gate_1",
        "gate_2",
        "gate_3",
        "gate_4",
        "band_weights",
    ]
    assert not any("aux_head" in i.name for i in graph.initializer)


def test_the_auxiliary_loss_counts_known_classes_only() -> None:
    from models.train.footprints import _loss

    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 1, 8, 8, generator=gen)
    target = (torch.rand(2, 1, 8, 8, generator=gen) > 0.5).float()
    aux_logits = torch.randn(2, 3, 8, 8, generator=gen)
    plain = _loss(logits, target, [], 0.0)
    unknown = torch.full((2, 8, 8), -100, dtype=torch.long)
    assert torch.equal(_loss(logits, target, [], 0.0, (aux_logits, unknown, 1.0)), plain)
    half = unknown.clone()
    half[0] = 2
    expected = torch.nn.functional.cross_entropy(aux_logits[:1], half[:1])
    got = _loss(logits, target, [], 0.0, (aux_logits, half, 0.5))
    assert torch.isclose(got, plain + 0.5 * expected)


def test_other_classes_need_mask_rasters(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="--aux-class needs mask rasters"):
        main(["train", "footprints", "--tiny", "--aux-class", "road=2", "--out", str(tmp_path)])
