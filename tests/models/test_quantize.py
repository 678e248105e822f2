"""INT8 copies of image models: calibration images, hold-out and the footprints copy's accuracy."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from models.quantize import (
    find_images,
    model_feed,
    quantize_model,
    read_crop,
    split_images,
    upsampling_as_depth_to_space,
)
from service.runtime.manifest import MANIFEST_KEY, Manifest

REPO = Path(__file__).resolve().parents[2]
DATA = REPO.parent / "shared" / "data"
DUBAI = DATA / "footprints" / "dubai"
SHIPPED = REPO / "models" / "shipped"


def _touch(root: Path, *names: str) -> list[Path]:
    paths = [root / n for n in names]
    for p in paths:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"")
    return paths


def test_whole_folders_are_held_out_where_there_are_several(tmp_path: Path) -> None:
    _touch(tmp_path, *(f"Tile {t}/images/part_{i}.jpg" for t in range(1, 9) for i in (1, 2)))
    _touch(tmp_path, "Tile 1/masks/part_1.txt")
    images = find_images(tmp_path)
    assert len(images) == 16
    calibrate, held = split_images(images, tmp_path, 0.25)
    assert {p.parent.parent.name for p in held} == {"Tile 7", "Tile 8"}
    assert {p.parent.parent.name for p in calibrate} == {f"Tile {t}" for t in range(1, 7)}


def test_a_flat_folder_holds_out_every_kth_image(tmp_path: Path) -> None:
    images = _touch(tmp_path, *(f"{i:02d}.png" for i in range(8)))
    calibrate, held = split_images(images, tmp_path, 0.25)
    assert [p.name for p in held] == ["03.png", "07.png"]
    assert len(calibrate) == 6
    with pytest.raises(ValueError, match="at least 2"):
        split_images(images[:1], tmp_path)
    with pytest.raises(ValueError, match="between 0 and 1"):
        split_images(images, tmp_path, 1.0)


def test_a_crop_is_centred_and_a_multiple_of_the_model_s_step() -> None:
    image = DUBAI / "Tile 1" / "images" / "image_part_001.jpg"
    crop = read_crop(image, 3, 250, 16)
    assert (crop.shape, crop.dtype) == ((3, 240, 240), np.float32)
    assert crop.max() <= 255
    assert crop.std() > 1  # real pixels, not padding
    with pytest.raises(ValueError, match="has 3 band\\(s\\); the model takes 4"):
        read_crop(image, 4, 256, 16)
    with pytest.raises(ValueError, match="cannot be read as an image"):
        read_crop(DUBAI / "classes.json", 3, 256, 16)


def test_the_feed_is_what_the_server_gives_the_model() -> None:
    session = ort.InferenceSession(str(SHIPPED / "footprints-2.2.0.onnx"))
    footprints = Manifest.from_json(session.get_modelmeta().custom_metadata_map[MANIFEST_KEY])
    crop = np.stack([np.full((32, 32), v, np.float32) for v in (10.0, 20.0, 30.0)])
    feed = model_feed(footprints, crop)
    assert feed["image"].shape == (1, 3, 32, 32)
    np.testing.assert_allclose(feed["band_mean"], [[10.0, 20.0, 30.0]])


def test_upsampling_rewritten_for_int8_gives_the_same_float32_outputs(tmp_path: Path) -> None:
    source = SHIPPED / "footprints-2.2.0.onnx"
    model = onnx.load(str(source))
    assert upsampling_as_depth_to_space(model.graph) == 4
    ops = [n.op_type for n in model.graph.node]
    assert "ConvTranspose" not in ops
    assert ops.count("DepthToSpace") == 4
    rewritten = tmp_path / "rewritten.onnx"
    onnx.save(model, str(rewritten))
    image = read_crop(DUBAI / "Tile 7" / "images" / "image_part_001.jpg", 3, 128, 16)
    feed = {"image": image[None], "band_mean": image.mean(axis=(1, 2))[None]}
    cpu = ["CPUExecutionProvider"]
    before = ort.InferenceSession(str(source), providers=cpu).run(None, feed)
    after = ort.InferenceSession(str(rewritten), providers=cpu).run(None, feed)
    for a, b in zip(before, after, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)


@pytest.mark.slow
def test_the_footprints_copy_stays_close_to_float32_on_held_out_tiles(tmp_path: Path) -> None:
    """Calibrated on Tiles 1-6, scored on Tiles 7 and 8 (about 2 minutes on 2 cores)."""
    root = tmp_path / "dubai"
    for tile in DUBAI.glob("Tile */images"):
        (root / tile.parent.name).mkdir(parents=True)
        for image in tile.glob("*.jpg"):
            (root / tile.parent.name / image.name).symlink_to(image)
    out = tmp_path / "footprints-int8.onnx"
    manifest = quantize_model(SHIPPED / "footprints-2.2.0.onnx", out, root)
    q = manifest.quantization
    assert q["holdout"] == ["Tile 7", "Tile 8"]
    assert q["pixel_iou_vs_float32"] >= 0.9
    attention = [o.name for o in manifest.attention if o.kind == "spatial"]
    assert all(q["mean_abs_diff"][name] <= 0.05 for name in attention), q
