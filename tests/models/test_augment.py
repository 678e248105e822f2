"""Training crops: geometry keeps image and mask aligned; radiometry stays in range."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from models.data.augment import ImagePyramid, Radiometry, radiometric
from models.data.buildings import SceneConfig
from models.data.footprint_mix import UNKNOWN_CLASS, MixConfig, TrainingMix
from models.data.footprint_sources import LabelledImage


def _scene(seed: int = 0, size: int = 200) -> tuple[np.ndarray, np.ndarray]:
    """Bright 12-px squares on dark ground: the mask can be read off the image."""
    rng = np.random.default_rng(seed)
    mask = np.zeros((size, size), np.uint8)
    for y, x in rng.integers(0, size - 12, (25, 2)):
        mask[y : y + 12, x : x + 12] = 1
    image = np.where(mask == 1, 220, 30).astype(np.uint8)[None].repeat(3, axis=0)
    return image, mask


@pytest.mark.parametrize("scale", [(1.0, 1.0), (0.5, 0.5), (2.0, 2.0), (4.0, 4.0)])
def test_rotated_and_rescaled_crops_keep_the_mask_on_the_buildings(
    scale: tuple[float, float],
) -> None:
    image, mask = _scene()
    pyramid = ImagePyramid(image, mask, levels=3)
    rng = np.random.default_rng(1)
    for _ in range(6):
        x, y, _ = pyramid.crop(rng, 64, scale)
        assert x.shape == (3, 64, 64)
        assert y.shape == (64, 64)
        bright = x[0] > 125
        # Resampling blurs edges by a pixel or so; everything else must agree.
        assert (bright == (y > 0)).float().mean() > 0.9


@pytest.mark.parametrize("scale", [(1.0, 1.0), (3.0, 3.0)])
def test_crops_carry_the_class_map_on_the_same_grid(scale: tuple[float, float]) -> None:
    image, mask = _scene()
    classes = np.where(mask == 1, 0, 1 + (np.arange(200) >= 100)[None, :]).astype(np.uint8)
    pyramid = ImagePyramid(image, mask, levels=3, classes=classes)
    assert pyramid.classes is not None
    assert [c.shape for c in pyramid.classes] == [m.shape for m in pyramid.masks]
    rng = np.random.default_rng(4)
    for _ in range(6):
        _, y, c = pyramid.crop(rng, 64, scale)
        assert c is not None
        assert c.dtype == torch.int64
        assert set(c.unique().tolist()) <= {0, 1, 2}
        # Nearest-pixel classes against the area-averaged mask: only edges differ.
        assert ((c == 0) == (y > 0)).float().mean() > 0.9
    assert ImagePyramid(image, mask, levels=2).crop(rng, 32, (1.0, 1.0))[2] is None


def _mean_building_area(masks: list[torch.Tensor]) -> float:
    """Mean pixel count of the mask's connected components."""
    sizes = []
    for m in masks:
        labels, n = ndimage.label(m.numpy() > 0)
        sizes += list(np.bincount(labels.ravel())[1:]) if n else []
    return float(np.mean(sizes))


def test_a_2x_shrink_quarters_the_area_of_buildings_and_keeps_their_share() -> None:
    image, mask = _scene(size=400)
    pyramid = ImagePyramid(image, mask, levels=2)
    rng = np.random.default_rng(2)
    native = [pyramid.crop(rng, 96, (1.0, 1.0))[1] for _ in range(40)]
    shrunk = [pyramid.crop(rng, 96, (2.0, 2.0))[1] for _ in range(40)]
    share = float(torch.stack(shrunk).mean() / torch.stack(native).mean())
    assert 0.7 < share < 1.4
    area = _mean_building_area(shrunk) / _mean_building_area(native)
    assert 0.15 < area < 0.4, area


def test_radiometry_changes_values_within_the_value_range() -> None:
    rng = np.random.default_rng(3)
    x = torch.full((4, 32, 32), 5000.0)
    x[:, :16] = 9000.0
    outs = [radiometric(rng, x, (0.0, 10000.0), Radiometry(haze=1.0, blur=1.0)) for _ in range(8)]
    for out in outs:
        assert out.shape == x.shape
        assert float(out.min()) >= 0.0
        assert float(out.max()) <= 10000.0
        assert (out[:, :16].mean() > out[:, 16:].mean()).item()  # the scene is still there
    assert len({round(float(o.mean()), 1) for o in outs}) == 8  # each crop differs


def test_radiometry_is_seeded() -> None:
    x = torch.rand(3, 16, 16) * 255
    a = radiometric(np.random.default_rng(9), x, (0.0, 255.0), Radiometry())
    b = radiometric(np.random.default_rng(9), x, (0.0, 255.0), Radiometry())
    assert torch.equal(a, b)


def test_a_mix_draws_synthetic_negative_and_real_crops_in_its_shares() -> None:
    image, mask = _scene()
    real = LabelledImage(image, mask, "g", "g")
    negative = LabelledImage(
        np.full((3, 100, 100), 77, np.uint8), np.zeros((100, 100), np.uint8), "n", "n", True
    )
    mix = TrainingMix(
        [real],
        [negative],
        MixConfig(
            tile_size=32,
            synthetic_ratio=0.3,
            negative_ratio=0.3,
            radiometry=None,
            scenes=SceneConfig(),
        ),
    )
    x, y, classes = mix.batch(np.random.default_rng(0), 200)
    assert x.shape == (200, 3, 32, 32)
    assert y.shape == (200, 1, 32, 32)
    # Neither the real image here nor negatives nor synthetic tiles have classes.
    assert classes.shape == (200, 32, 32)
    assert bool((classes == UNKNOWN_CLASS).all())
    flat_negative = ((x - 77).abs() < 0.5).flatten(1).all(dim=1)
    near = ((x - 30).abs() < 0.5) | ((x - 220).abs() < 0.5)
    two_tone = near.flatten(1).float().mean(dim=1) > 0.5
    assert 40 <= int(flat_negative.sum()) <= 80
    assert 60 <= int(two_tone.sum()) <= 110
    assert float(y[flat_negative].sum()) == 0.0


def test_a_mix_knows_the_classes_of_real_crops_only() -> None:
    image, mask = _scene()
    classes = (1 - mask).astype(np.uint8)
    real = LabelledImage(image, mask, "g", "g", classes=classes)
    negative = LabelledImage(image, np.zeros_like(mask), "n", "n", negative=True)
    config = MixConfig(tile_size=32, negative_ratio=0.5, radiometry=None)
    _, y, c = TrainingMix([real], [negative], config).batch(np.random.default_rng(5), 60)
    known = (c != UNKNOWN_CLASS).flatten(1).all(dim=1)
    unknown = (c == UNKNOWN_CLASS).flatten(1).all(dim=1)
    assert bool((known | unknown).all())
    assert 15 <= int(known.sum()) <= 45
    assert ((c[known] == 0) == (y[known, 0] > 0)).float().mean() > 0.9


def test_a_mix_without_images_with_buildings_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one image with buildings"):
        TrainingMix([], [], MixConfig())


@pytest.mark.parametrize(("balance", "low", "high"), [("pixels", 0, 30), ("groups", 70, 130)])
def test_groups_can_be_drawn_as_often_as_each_other_whatever_their_size(
    balance: str, low: int, high: int
) -> None:
    # Group "big" is one 400 x 400 image (value 200), group "small" two 50 x 50 images (value 20).
    big = LabelledImage(
        np.full((3, 400, 400), 200, np.uint8), np.zeros((400, 400), np.uint8), "big", "b"
    )
    small = [
        LabelledImage(np.full((3, 50, 50), 20, np.uint8), np.zeros((50, 50), np.uint8), "small", n)
        for n in ("s1", "s2")
    ]
    config = MixConfig(tile_size=16, negative_ratio=0.0, radiometry=None, balance=balance)
    x, _, _ = TrainingMix([big, *small], [], config).batch(np.random.default_rng(1), 200)
    from_small = int((x.flatten(1).mean(dim=1) < 100).sum())
    assert low <= from_small <= high


def test_an_unknown_balance_is_refused() -> None:
    image, mask = _scene()
    with pytest.raises(ValueError, match="balance must be"):
        TrainingMix([LabelledImage(image, mask, "g", "g")], [], MixConfig(balance="area"))
