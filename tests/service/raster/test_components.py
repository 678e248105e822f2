"""Regions of a mask labelled block by block: the same as labelling the whole mask at once."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
from scipy import ndimage

from service.raster.components import FOUR, Region, TooManyRegions, regions


def _whole(mask: np.ndarray) -> list[Region]:
    """Every region of the whole mask, labelled at once, in order of its first pixel."""
    out = []
    for code in range(1, int(mask.max()) + 1):
        labels, _ = ndimage.label(mask == code, FOUR)
        for i, (rows, cols) in enumerate(ndimage.find_objects(labels), start=1):
            first = int(np.flatnonzero(labels.ravel() == i)[0])
            pixels = int(np.count_nonzero(labels == i))
            out.append(Region(code, rows.start, rows.stop, cols.start, cols.stop, first, pixels))
    return sorted(out, key=lambda r: r.first)


def _blocks(mask: np.ndarray, rows: int) -> list[tuple[int, np.ndarray]]:
    return [(r, mask[r : r + rows]) for r in range(0, mask.shape[0], rows)]


@pytest.mark.parametrize("rows", [1, 2, 7, 83])
@pytest.mark.parametrize("codes", [1, 3])
@pytest.mark.parametrize("min_pixels", [0, 3])
def test_regions_across_block_edges_are_joined(rows: int, codes: int, min_pixels: int) -> None:
    rng = np.random.default_rng(rows * 10 + codes)
    for density in (0.1, 0.45, 0.6, 0.9):
        mask = (rng.random((83, 61)) < density) * rng.integers(1, codes + 1, (83, 61))
        mask = mask.astype(np.uint8)
        whole = [r for r in _whole(mask) if r.pixels >= min_pixels]
        assert regions(_blocks(mask, rows), 61, min_pixels) == whole


def test_a_spiral_that_leaves_and_reenters_blocks_is_one_region() -> None:
    mask = np.zeros((9, 9), np.uint8)
    mask[0, :] = mask[:, 8] = mask[8, :] = mask[2:, 0] = mask[2, :7] = mask[2:7, 6] = 1
    mask[6, 2:7] = mask[4:7, 2] = mask[4, 2:5] = 1
    [region] = regions(_blocks(mask, 1), 9)
    assert (region.top, region.bottom, region.left, region.right) == (0, 9, 0, 9)
    assert region.pixels == int(mask.sum())
    assert region.seed(9) == (0, 0)


def test_small_regions_are_dropped_and_the_limit_is_refused_early() -> None:
    mask = np.zeros((40, 40), np.uint8)
    mask[1:3, 1:3] = 1  # 4 px
    mask[10:20, 10:20] = 1  # 100 px
    assert [r.pixels for r in regions(_blocks(mask, 8), 40, min_pixels=5)] == [100]
    noisy = (np.random.default_rng(0).random((400, 40)) < 0.5).astype(np.uint8)
    seen = []

    def blocks() -> Iterator[tuple[int, np.ndarray]]:
        for first, block in _blocks(noisy, 8):
            seen.append(first)
            yield first, block

    with pytest.raises(TooManyRegions):
        regions(blocks(), 40, limit=100)
    assert len(seen) < 10  # refused within the first blocks, not after the whole mask
