"""The synthetic scene generator: seeded, well-formed and building-like."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from models.data.buildings import SceneConfig, make_batch, make_tile


def test_tile_has_documented_dtypes_and_shapes() -> None:
    image, mask = make_tile(np.random.default_rng(0), 128)
    assert image.shape == (3, 128, 128)
    assert image.dtype == np.uint8
    assert mask.shape == (128, 128)
    assert mask.dtype == np.uint8
    assert set(np.unique(mask)) <= {0, 1}


def test_same_seed_same_tile_other_seed_other_tile() -> None:
    a = make_tile(np.random.default_rng(7), 96)
    b = make_tile(np.random.default_rng(7), 96)
    c = make_tile(np.random.default_rng(8), 96)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])


def test_batch_stacks_tiles() -> None:
    images, masks = make_batch(np.random.default_rng(1), 4, 64)
    assert images.shape == (4, 3, 64, 64)
    assert masks.shape == (4, 64, 64)


def test_scenes_hold_several_separate_buildings_of_varied_size() -> None:
    rng = np.random.default_rng(3)
    sizes: list[int] = []
    coverage = []
    for _ in range(8):
        _, mask = make_tile(rng, 256)
        labels, _n = ndimage.label(mask)
        sizes.extend(np.bincount(labels.ravel())[1:].tolist())
        coverage.append(mask.mean())
    assert len(sizes) >= 8 * 4
    assert min(sizes) < 200
    assert max(sizes) > 1500
    assert 0.05 < float(np.mean(coverage)) < 0.4


def test_roofs_differ_from_their_surroundings_but_not_trivially() -> None:
    # Buildings are visible (roof pixels differ from the ground on average) yet
    # no single colour threshold separates them: roof and ground colour ranges overlap.
    rng = np.random.default_rng(4)
    images, masks = make_batch(rng, 8, 128)
    roof = images.transpose(1, 0, 2, 3)[:, masks.astype(bool)].astype(float)
    ground = images.transpose(1, 0, 2, 3)[:, ~masks.astype(bool)].astype(float)
    assert np.abs(roof.mean(axis=1) - ground.mean(axis=1)).max() > 5
    for band in range(3):
        lo, hi = np.percentile(ground[band], [5, 95])
        inside = np.mean((roof[band] > lo) & (roof[band] < hi))
        assert inside > 0.2


def _grain(image: np.ndarray) -> float:
    """Mean absolute difference between horizontally neighbouring pixels."""
    return float(np.abs(np.diff(image.astype(float), axis=2)).mean())


def test_noise_level_follows_the_config() -> None:
    quiet = SceneConfig(noise_sigma=(0.0, 0.0))
    loud = SceneConfig(noise_sigma=(30.0, 30.0))
    a, _ = make_tile(np.random.default_rng(5), 64, quiet)
    b, _ = make_tile(np.random.default_rng(5), 64, loud)
    assert _grain(b) > 2 * _grain(a)


@pytest.mark.parametrize("size", [64, 512])
def test_building_count_scales_with_area(size: int) -> None:
    cfg = SceneConfig(buildings=(8, 8))
    _, mask = make_tile(np.random.default_rng(6), size, cfg)
    _, n = ndimage.label(mask)
    assert n <= round(8 * (size / 256) ** 2)


def test_defaults_draw_no_snow_and_snow_can_be_switched_on() -> None:
    plain, _ = make_batch(np.random.default_rng(9), 6, 64)
    snowy, _ = make_batch(np.random.default_rng(9), 6, 64, SceneConfig(snow=1.0))
    assert np.median(plain.mean(axis=1)) < 170
    assert np.median(snowy.mean(axis=1)) > 180


def test_forest_patches_hold_no_buildings() -> None:
    images, masks = make_batch(np.random.default_rng(10), 6, 128, SceneConfig(forest=1.0))
    r, g, b = (images[:, i].astype(int) for i in range(3))
    canopy = (g > r + 10) & (g > b + 10) & (g < 100)
    # Default scenes have only scattered trees (a few percent of pixels).
    assert canopy.mean() > 0.15
    # Only the crowns of trees overhanging a roof may lie on a footprint.
    assert masks[canopy].mean() < 0.05
