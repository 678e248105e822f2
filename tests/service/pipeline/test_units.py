"""Units of a scene job: their partial sums blend into what one whole-scene blender gives."""

from __future__ import annotations

import numpy as np
import pytest

from service.pipeline.units import (
    PartialSums,
    Unit,
    UnitBlender,
    blend_units,
    plan_units,
    unit_extent,
)
from service.runtime.tiling import StripBlender, TileGrid
from tests.helpers.blending import blend_scene


def _outputs(grid: TileGrid, layers: int, seed: int) -> dict[tuple[int, int], np.ndarray | None]:
    rng = np.random.default_rng(seed)
    out: dict[tuple[int, int], np.ndarray | None] = {}
    for tile in grid:
        # Some tiles have no data at all (skipped), as over a scene's nodata.
        skipped = rng.random() < 0.15
        out[tile.row, tile.col] = (
            None if skipped else rng.random((layers, grid.size, grid.size), dtype=np.float32)
        )
    return out


@pytest.mark.parametrize(
    ("height", "width", "unit_tiles"),
    [(700, 530, 3), (1000, 260, 1), (90, 90, 4), (700, 530, 6), (300, 1100, 2)],
)
def test_units_blend_to_the_whole_scene_blend(height: int, width: int, unit_tiles: int) -> None:
    grid = TileGrid(height, width, 128, 32, 16)
    layers = 3
    out = _outputs(grid, layers, seed=height)
    units = plan_units(grid, unit_tiles)
    assert [u.first for u in units] == sorted(u.first for u in units)
    assert units[0].first == 0
    assert units[-1].stop == grid.rows
    stored: dict[int, bytes] = {}
    for unit in reversed(units):  # units finish in any order
        blender = UnitBlender(grid, unit, layers)
        for row in range(unit.first, unit.stop):
            for tile in grid.row_tiles(row)[unit.left : unit.right]:
                blender.add(tile, out[tile.row, tile.col])
        tiles = (unit.stop - unit.first) * len(unit.cols(grid))
        blender.partial.sums = {"n": np.array([tiles], np.float64)}
        stored[unit.index] = blender.partial.to_bytes()
        assert stored[unit.index] == blender.partial.to_bytes()  # same sums, same bytes

    sums: dict[str, np.ndarray] = {"n": np.zeros(1)}
    scene = np.full((layers, height, width), -1.0, np.float32)
    loaded: list[int] = []

    def load(unit: Unit) -> PartialSums:
        loaded.append(unit.index)
        return PartialSums.from_bytes(stored[unit.index])

    for first, col, block in blend_units(grid, units, load, sums, columns=100):
        assert block.shape[2] <= 100
        scene[:, first : first + block.shape[1], col : col + block.shape[2]] = block
    whole = blend_scene(StripBlender(grid, layers), out)
    np.testing.assert_allclose(scene, whole, atol=1e-5, equal_nan=True)
    assert np.array_equal(np.isnan(scene), np.isnan(whole))
    assert (scene != -1).all()  # every row came out
    assert sorted(loaded) == [u.index for u in units]  # each loaded once
    assert sums["n"][0] == len(grid)  # every unit's totals, once


def test_a_unit_holds_only_the_pixels_its_tiles_write() -> None:
    grid = TileGrid(1000, 300, 128, 28, 0)
    units = plan_units(grid, 2 * grid.cols)
    assert all(u.stop - u.first == 2 for u in units[:-1])
    assert all(u.cols(grid) == range(grid.cols) for u in units)
    top, bottom, left, right = unit_extent(grid, units[1])
    assert (top, bottom, left, right) == (2 * 100, 3 * 100 + 128, 0, 300)
    assert PartialSums.empty(grid, units[1], 2).acc.shape == (2, bottom - top, 300)


def test_a_row_wider_than_a_unit_is_cut_across_its_columns() -> None:
    grid = TileGrid(300, 2000, 128, 28, 0)  # 20 tiles a row
    units = plan_units(grid, 6)
    assert [(u.first, u.cols(grid)) for u in units[:4]] == [
        (0, range(0, 6)),
        (0, range(6, 12)),
        (0, range(12, 18)),
        (0, range(18, 20)),
    ]
    assert sum(len(u.cols(grid)) * (u.stop - u.first) for u in units) == len(grid)
    assert unit_extent(grid, units[1]) == (0, 128, 600, 11 * 100 + 128)
    assert [Unit.from_json(u.index, u.to_json()) for u in units] == units
    assert Unit.from_json(0, [0, 2]) == Unit(0, 0, 2)  # records planned in whole rows
