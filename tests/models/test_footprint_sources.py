"""Real footprint training data: mask rasters, folders of pairs, negatives, group splits."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.errors import NotGeoreferencedWarning
from rasterio.transform import from_origin

from models.data.footprint_sources import (
    LabelledImage,
    load_negatives,
    load_pair,
    pair_folder,
    split_groups,
)
from models.data.rasters import (
    MaskRule,
    RasterDataError,
    parse_colour,
    read_image,
    read_mask,
    read_masks,
)

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "footprints"
DUBAI = DATA / "dubai"
BUILDING = "#3C1098"
needs_data = pytest.mark.skipif(not DUBAI.exists(), reason="shared footprints data not present")


def _write(path: Path, data: np.ndarray, **kw: object) -> Path:
    """Write ``(K, H, W)`` data with the driver the suffix implies."""
    driver = {".png": "PNG", ".jpg": "JPEG", ".tif": "GTiff"}[path.suffix]
    profile = {"driver": driver, "width": data.shape[2], "height": data.shape[1]}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path, "w", count=data.shape[0], dtype=data.dtype, **profile, **kw) as d:
            d.write(data)
    return path


def test_colours_parse_in_hex_and_decimal() -> None:
    assert parse_colour("#3C1098") == (60, 16, 152)
    assert parse_colour("3c1098") == (60, 16, 152)
    assert parse_colour("60,16,152") == (60, 16, 152)
    with pytest.raises(RasterDataError, match="neither"):
        parse_colour("purple")


def test_a_one_band_png_mask_by_value(tmp_path: Path) -> None:
    raw = np.zeros((1, 8, 8), np.uint8)
    raw[0, 2:4, 2:6] = 255
    raw[0, 6, 6] = 128  # another class, not a building
    mask = read_mask(_write(tmp_path / "m.png", raw), MaskRule(value=255), (8, 8))
    assert mask.dtype == np.uint8
    assert mask.sum() == 8
    assert mask[2, 2] == 1
    assert mask[6, 6] == 0


def test_an_rgb_class_map_by_colour_and_a_value_rule_refuses_it(tmp_path: Path) -> None:
    raw = np.zeros((3, 6, 6), np.uint8)
    raw[:, 1:3, 1:3] = np.array([60, 16, 152])[:, None, None]
    raw[:, 4:, 4:] = np.array([132, 41, 246])[:, None, None]
    path = _write(tmp_path / "classes.png", raw)
    mask = read_mask(path, MaskRule(color=(60, 16, 152)), (6, 6))
    assert mask.sum() == 4
    assert mask[1, 1] == 1
    assert mask[5, 5] == 0
    with pytest.raises(RasterDataError, match="one-band mask"):
        read_mask(path, MaskRule(value=1), (6, 6))


def test_a_class_map_gives_the_building_mask_and_the_other_classes(tmp_path: Path) -> None:
    raw = np.zeros((3, 6, 6), np.uint8)  # black: unlabelled
    raw[:, :2] = np.array([60, 16, 152])[:, None, None]  # building
    raw[:, 2:4] = np.array([132, 41, 246])[:, None, None]  # land
    raw[:, 4:, :3] = np.array([110, 193, 228])[:, None, None]  # road
    path = _write(tmp_path / "classes.png", raw)
    others = [MaskRule(color=(132, 41, 246)), MaskRule(color=(110, 193, 228))]
    mask, classes = read_masks(path, MaskRule(color=(60, 16, 152)), (6, 6), others)
    assert np.array_equal(mask, read_mask(path, MaskRule(color=(60, 16, 152)), (6, 6)))
    assert classes.dtype == np.uint8
    assert (classes[:2] == 0).all()  # buildings are none of the other classes
    assert (classes[2:4] == 1).all()
    assert (classes[4:, :3] == 2).all()
    assert (classes[4:, 3:] == 0).all()  # unlabelled
    # Values in one-band masks, and pairs loaded with their classes.
    image = _write(tmp_path / "i.png", np.full((3, 6, 6), 9, np.uint8))
    values = _write(tmp_path / "v.png", (np.arange(36, dtype=np.uint8) % 3).reshape(1, 6, 6))
    item = load_pair(image, values, MaskRule(value=2), "g", [MaskRule(value=0)])
    assert item.classes is not None
    assert np.array_equal(item.classes == 1, (np.arange(36) % 3 == 0).reshape(6, 6))
    assert np.array_equal(item.mask == 1, (np.arange(36) % 3 == 2).reshape(6, 6))
    assert load_pair(image, values, MaskRule(value=2), "g").classes is None


def test_a_mask_of_another_size_is_refused(tmp_path: Path) -> None:
    path = _write(tmp_path / "m.tif", np.zeros((1, 4, 5), np.uint8))
    with pytest.raises(RasterDataError, match="must match pixel for pixel"):
        read_mask(path, MaskRule(value=1), (4, 4))


def test_a_mask_rule_needs_exactly_one_of_value_and_colour() -> None:
    with pytest.raises(RasterDataError, match="exactly one"):
        MaskRule()
    with pytest.raises(RasterDataError, match="exactly one"):
        MaskRule(value=1, color=(1, 2, 3))


def test_a_georeferenced_image_reports_its_pixel_size(tmp_path: Path) -> None:
    data = np.ones((4, 8, 8), np.uint16)
    path = _write(
        tmp_path / "rgbn.tif", data, crs="EPSG:32631", transform=from_origin(0, 0, 0.3, 0.3)
    )
    image, gsd = read_image(path)
    assert image.shape == (4, 8, 8)
    assert image.dtype == np.uint16
    assert gsd == pytest.approx(0.3)
    _, no_gsd = read_image(_write(tmp_path / "plain.png", np.ones((3, 8, 8), np.uint8)))
    assert no_gsd is None


def test_float_imagery_is_refused(tmp_path: Path) -> None:
    with pytest.raises(RasterDataError, match="float32; training takes uint8 or uint16"):
        read_image(_write(tmp_path / "f.tif", np.zeros((3, 4, 4), np.float32)))


@needs_data
def test_dubai_palette_masks_are_read_by_colour_like_rgb_ones() -> None:
    # Tile 2 saves its masks as palette PNGs; Tile 1 as RGB. Both have buildings.
    for tile in ("Tile 1", "Tile 2"):
        item = load_pair(
            DUBAI / tile / "images" / "image_part_001.jpg",
            DUBAI / tile / "masks" / "image_part_001.png",
            MaskRule(color=parse_colour(BUILDING)),
            tile,
        )
        assert item.image.shape[0] == 3
        assert item.mask.shape == item.image.shape[1:]
        assert 0.002 < item.mask.mean() < 0.6, (tile, item.mask.mean())


@needs_data
def test_the_dubai_layout_groups_pairs_by_tile_folder() -> None:
    pairs = pair_folder(DUBAI)
    assert len(pairs) == 72
    assert sorted({g for _, _, g in pairs}) == [f"Tile {k}" for k in range(1, 9)]
    assert all(i.stem == m.stem and i.parent.parent == m.parent.parent for i, m, _ in pairs)


def test_a_flat_folder_makes_each_image_its_own_group(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    for stem in ("a", "b"):
        _write(tmp_path / "images" / f"{stem}.png", np.zeros((3, 8, 8), np.uint8))
        _write(tmp_path / "masks" / f"{stem}.png", np.zeros((1, 8, 8), np.uint8))
    assert [g for _, _, g in pair_folder(tmp_path)] == ["a", "b"]


def test_an_image_without_its_mask_is_named(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    _write(tmp_path / "images" / "lonely.png", np.zeros((3, 8, 8), np.uint8))
    with pytest.raises(RasterDataError, match=r"lonely\.png has no mask"):
        pair_folder(tmp_path)
    shutil.rmtree(tmp_path / "images")
    with pytest.raises(RasterDataError, match="no image/mask pairs"):
        pair_folder(tmp_path)


def test_negatives_come_from_files_and_folders_with_empty_masks(tmp_path: Path) -> None:
    folder = tmp_path / "neg"
    folder.mkdir()
    _write(folder / "forest.png", np.full((3, 8, 9), 40, np.uint8))
    single = _write(tmp_path / "lake.tif", np.full((3, 4, 4), 9, np.uint8))
    items = load_negatives([folder, single])
    assert [(i.name, i.negative, int(i.mask.sum())) for i in items] == [
        ("forest", True, 0),
        ("lake", True, 0),
    ]
    with pytest.raises(RasterDataError, match="does not exist"):
        load_negatives([tmp_path / "missing"])


def _item(group: str, negative: bool = False) -> LabelledImage:
    return LabelledImage(
        np.zeros((3, 2, 2), np.uint8), np.zeros((2, 2), np.uint8), group, group, negative=negative
    )


def test_whole_groups_are_held_out() -> None:
    items = [_item("Tile 1"), _item("Tile 1"), _item("Tile 2"), _item("forest", negative=True)]
    train, held = split_groups(items, ["Tile 1", "forest"])
    assert [i.group for i in train] == ["Tile 2"]
    assert sorted(i.group for i in held) == ["Tile 1", "Tile 1", "forest"]
    # Without a choice, the last fifth of the groups with buildings (at least one).
    train, held = split_groups(items, None)
    assert {i.group for i in held} == {"Tile 2"}
    with pytest.raises(RasterDataError, match="'Tile 9' not found; groups are"):
        split_groups(items, ["Tile 9"])
    with pytest.raises(RasterDataError, match="no image with buildings"):
        split_groups(items, ["Tile 1", "Tile 2"])
