"""Tiling and Hann blending: coverage, alignment, and exactness on consistent tiles."""

from __future__ import annotations

import itertools
import tracemalloc

import numpy as np
import pytest

from service.runtime.tiling import (
    RowJoiner,
    StripBlender,
    TileGrid,
    hann_weight,
    read_bounds,
    reflect_pad,
)
from tests.helpers.blending import blend_scene, summed_scene


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
    outputs = {}
    for tile in grid:
        y0, y1, x0, x1 = read_bounds(tile, h, w)
        outputs[tile.row, tile.col] = reflect_pad(truth[:, y0:y1, x0:x1], tile, h, w)
        assert outputs[tile.row, tile.col].shape == (2, size, size)
    out = blend_scene(StripBlender(grid, 2), outputs)
    np.testing.assert_allclose(out, truth, atol=1e-5)


def test_blending_averages_disagreeing_tiles_smoothly() -> None:
    h, w = 300, 300
    grid = TileGrid(h, w, 128, 64)
    # Each tile says something different; blending must stay within range and
    # change gradually, with no step at tile edges.
    outputs = {(t.row, t.col): np.full((1, 128, 128), float(t.col % 2), np.float32) for t in grid}
    out = blend_scene(StripBlender(grid, 1), outputs)
    assert out.min() >= 0
    assert out.max() <= 1
    assert np.abs(np.diff(out[0], axis=1)).max() < 0.2


def test_skipped_tiles_leave_nodata() -> None:
    grid = TileGrid(256, 512, 256, 0)
    blender = StripBlender(grid, 1, columns=128)
    for tile in grid.row_tiles(0):
        blender.add(tile, None if tile.col == 1 else np.ones((1, 256, 256), np.float32))
    windows = list(blender.pop_final())
    assert [(first, col) for first, col, _ in windows] == [(0, 0), (0, 128), (0, 256), (0, 384)]
    assert all(np.isnan(block).all() for _, col, block in windows if col >= 256)
    assert all((block == 1).all() for _, col, block in windows if col < 256)


@pytest.mark.parametrize(
    ("h", "w", "size", "overlap", "columns"),
    [
        (1000, 700, 256, 64, 512),  # a snapped last row and column
        (4096, 1400, 512, 128, 512),
        (1100, 900, 200, 0, 128),  # no overlap, as class maps tile
        (37, 1200, 128, 32, 100),  # one row; windows off the tile grid
        (5, 5, 64, 16, 512),  # smaller than a tile
        (832, 832, 256, 64, 256),  # nothing snapped: every row its own group
    ],
)
def test_windows_blend_as_whole_scene_sums_do(
    h: int, w: int, size: int, overlap: int, columns: int
) -> None:
    grid = TileGrid(h, w, size, overlap)
    rng = np.random.default_rng(h + w)
    outputs = {
        (t.row, t.col): None if rng.random() < 0.1 else rng.random((3, size, size), np.float32)
        for t in grid
    }
    got = blend_scene(StripBlender(grid, 3, columns), outputs)
    want = summed_scene(grid, 3, outputs)
    # Rows above a snapped last row group get their tiles in the same order:
    # the same float32 sums. In the group, tiles come column by column.
    exact = grid.block_rows(grid.row_groups()[-1].start)[0]
    np.testing.assert_array_equal(got[:, :exact], want[:, :exact])
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
    assert np.array_equal(np.isnan(got), np.isnan(want))


def test_a_snapped_last_row_is_blended_with_the_row_before() -> None:
    snapped = TileGrid(1000, 700, 256, 64)  # rows at 0, 192, 384, 576 and 744
    assert snapped.row_groups() == [range(0, 1), range(1, 2), range(2, 3), range(3, 5)]
    order = [(t.row, t.col) for t in snapped.blend_order()[-1]]
    assert order[:4] == [(3, 0), (4, 0), (3, 1), (4, 1)]
    even = TileGrid(832, 832, 256, 64)  # the last row overlaps by 64 like the others
    assert even.row_groups() == [range(r, r + 1) for r in range(4)]
    blender = StripBlender(snapped, 1)
    with pytest.raises(RuntimeError, match="blend order"):
        blender.add(snapped.row_tiles(0)[1], None)


def _blend_peak_bytes(h: int, w: int) -> int:
    """Peak bytes numpy allocates while blending a whole ``h x w`` scene of 3 layers."""
    grid = TileGrid(h, w, 128, 32)
    tile = np.ones((3, 128, 128), np.float32)
    tracemalloc.start()
    try:
        blender = StripBlender(grid, 3, columns=128)
        for group in grid.blend_order():
            for t in group:
                blender.add(t, tile)
                windows = list(blender.pop_final())  # written out, then let go
                del windows
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_blending_holds_a_few_tiles_and_the_overlap_rows_whatever_the_scene_size() -> None:
    small = _blend_peak_bytes(600, 600)
    tall, wide = _blend_peak_bytes(4000, 600), _blend_peak_bytes(600, 4000)
    assert tall <= small * 1.02
    # Across the scene only the 32 rows the next tile row shares are kept: the
    # sums and weights of 4 layers, 4 bytes each. Held for whole 128-row tile
    # rows, as blending whole rows did, they would be four times as much.
    overlap_rows = (3 + 1) * 32 * 4 * (4000 - 600)
    assert wide - small < 1.25 * overlap_rows


def test_hann_weight_is_symmetric_positive_and_peaks_in_the_middle() -> None:
    w = hann_weight(64)
    assert w.min() > 0
    np.testing.assert_allclose(w, w.T)
    np.testing.assert_allclose(w, w[::-1, ::-1])
    assert w[32, 32] == w.max()


def test_overlap_over_half_the_tile_is_refused() -> None:
    with pytest.raises(ValueError, match="half"):
        TileGrid(100, 100, 64, 40)


def test_windows_join_back_into_whole_rows() -> None:
    grid = TileGrid(300, 700, 128, 32)
    rng = np.random.default_rng(1)
    outputs = {(t.row, t.col): rng.random((2, 128, 128), np.float32) for t in grid}
    blender, joiner = StripBlender(grid, 2, columns=256), RowJoiner(grid.width)
    rows: list[tuple[int, np.ndarray]] = []
    for group in grid.blend_order():
        for tile in group:
            blender.add(tile, outputs[tile.row, tile.col])
            rows += [r for w in blender.pop_final() if (r := joiner.push(*w)) is not None]
    assert [first for first, _ in rows] == [grid.block_rows(g.start)[0] for g in grid.row_groups()]
    scene = np.concatenate([block for _, block in rows], axis=1)
    np.testing.assert_array_equal(scene, blend_scene(StripBlender(grid, 2, columns=256), outputs))
