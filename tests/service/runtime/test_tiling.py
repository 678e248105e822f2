"""Tiling and Hann blending: coverage, alignment, and exactness on consistent tiles."""

from __future__ import annotations

import itertools
import tracemalloc

import numpy as np
import pytest

from service.runtime.tiling import StripBlender, TileGrid, hann_weight, read_bounds, reflect_pad


@pytest.mark.parametrize(
    ("h", "w", "size", "overlap"),
    [(1000, 700, 256, 64), (256, 256, 256, 0), (37, 1200, 128, 32), (5, 5, 64, 16)],
)
def test_grid_covers_every_pixel_and_blocks_partition_rows(
    h: int, w: int, size: int, overlap: int
) -> None:
    grid = TileGrid(h, w, size, overlap)
    covered = np.zeros((h, w), dtype=int)
    for tile in grid:
        y0, y1, x0, x1 = read_bounds(tile, h, w)
        covered[y0:y1, x0:x1] += 1
    assert covered.min() >= 1
    rows = [grid.block_rows(r) for r in range(grid.rows)]
    assert rows[0][0] == 0
    assert rows[-1][1] == h
    for (_, stop), (start, _) in itertools.pairwise(rows):
        assert stop == start


def _scene_function(h: int, w: int) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    return np.stack([np.sin(yy / 17) + np.cos(xx / 23), yy / h])


def test_blending_tiles_that_agree_reproduces_the_scene_exactly() -> None:
    h, w, size = 700, 900, 256
    truth = _scene_function(h, w)
    grid = TileGrid(h, w, size, 64)
    blender = StripBlender(grid, 2)
    out = np.full_like(truth, np.nan)
    for row in range(grid.rows):
        for tile in grid.row_tiles(row):
            y0, y1, x0, x1 = read_bounds(tile, h, w)
            padded = reflect_pad(truth[:, y0:y1, x0:x1], tile, h, w)
            assert padded.shape == (2, size, size)
            blender.add(tile, padded)
        blender.row_done(row)
        for first, block in blender.pop_final():
            out[:, first : first + block.shape[1]] = block
    assert blender.finished
    np.testing.assert_allclose(out, truth, atol=1e-5)


def test_blending_averages_disagreeing_tiles_smoothly() -> None:
    h, w = 300, 300
    grid = TileGrid(h, w, 128, 64)
    blender = StripBlender(grid, 1)
    out = np.zeros((1, h, w), np.float32)
    for row in range(grid.rows):
        for tile in grid.row_tiles(row):
            # Each tile says something different; blending must stay within range
            # and change gradually, with no step at tile edges.
            blender.add(tile, np.full((1, 128, 128), float(tile.col % 2), np.float32))
        blender.row_done(row)
        for first, block in blender.pop_final():
            out[:, first : first + block.shape[1]] = block
    assert out.min() >= 0
    assert out.max() <= 1
    assert np.abs(np.diff(out[0], axis=1)).max() < 0.2


def test_skipped_tiles_leave_nodata() -> None:
    grid = TileGrid(256, 512, 256, 0)
    blender = StripBlender(grid, 1)
    for tile in grid.row_tiles(0):
        blender.add(tile, None if tile.col == 1 else np.ones((1, 256, 256), np.float32))
    blender.row_done(0)
    ((first, block),) = list(blender.pop_final())
    assert first == 0
    assert np.isnan(block[0, :, 256:]).all()
    assert (block[0, :, :256] == 1).all()


def _blend_peak_bytes(h: int, w: int) -> int:
    """Peak bytes numpy allocates while blending a whole ``h x w`` scene of 3 layers."""
    grid = TileGrid(h, w, 128, 32)
    tile = np.ones((3, 128, 128), np.float32)
    tracemalloc.start()
    try:
        blender = StripBlender(grid, 3)
        for row in range(grid.rows):
            for t in grid.row_tiles(row):
                blender.add(t, tile)
            blender.row_done(row)
            blocks = list(blender.pop_final())  # written out, then let go
            del blocks
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_blending_holds_one_tile_row_and_one_block_whatever_the_scene_height() -> None:
    short, tall = _blend_peak_bytes(256, 2048), _blend_peak_bytes(4096, 2048)
    assert tall <= short * 1.02
    # Sums and weights of one grid row's 128 scene rows, and one block of 96 rows
    # handed out: growing the buffers by copies, or dividing through temporaries,
    # held one to two more blocks.
    buffers, block = (3 + 1) * 128 * 2048 * 4, 3 * 96 * 2048 * 4
    assert tall < 1.25 * (buffers + block)


def test_hann_weight_is_symmetric_positive_and_peaks_in_the_middle() -> None:
    w = hann_weight(64)
    assert w.min() > 0
    np.testing.assert_allclose(w, w.T)
    np.testing.assert_allclose(w, w[::-1, ::-1])
    assert w[32, 32] == w.max()


def test_overlap_over_half_the_tile_is_refused() -> None:
    with pytest.raises(ValueError, match="half"):
        TileGrid(100, 100, 64, 40)
