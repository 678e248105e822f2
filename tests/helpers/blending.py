"""Blending a whole grid of tile outputs: through the blender, and by the plain sums."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from service.runtime.tiling import StripBlender, TileGrid, hann_weight, read_bounds

Outputs = Mapping[tuple[int, int], np.ndarray | None]


def blend_scene(blender: StripBlender, outputs: Outputs) -> np.ndarray:
    """``(layers, H, W)``: every tile's outputs through ``blender``, its windows put in place.

    Each window must come once; pixels of no window stay ``-1``.
    """
    grid = blender.grid
    scene = np.full((blender.layers, grid.height, grid.width), -1.0, np.float32)
    for group in grid.blend_order():
        for tile in group:
            blender.add(tile, outputs[tile.row, tile.col])
            for first, col, block in blender.pop_final():
                place = (slice(None), slice(first, first + block.shape[1]))
                place += (slice(col, col + block.shape[2]),)
                assert (scene[place] == -1).all(), "a window came twice"
                scene[place] = block
    assert blender.finished
    return scene


def summed_scene(grid: TileGrid, layers: int, outputs: Outputs) -> np.ndarray:
    """``(layers, H, W)``: Hann-weighted sums over the whole scene at once, divided.

    Tiles are added row by row, left to right, as blending whole rows did: the
    reference blending must match. NaN where no tile had data.
    """
    weight = hann_weight(grid.size)
    acc = np.zeros((layers, grid.height, grid.width), np.float32)
    wsum = np.zeros((grid.height, grid.width), np.float32)
    for tile in grid:
        out = outputs[tile.row, tile.col]
        if out is None:
            continue
        y0, y1, x0, x1 = read_bounds(tile, grid.height, grid.width)
        ty, tx = y0 - tile.y, x0 - tile.x
        part = weight[ty : ty + y1 - y0, tx : tx + x1 - x0]
        acc[:, y0:y1, x0:x1] += out[:, ty : ty + y1 - y0, tx : tx + x1 - x0] * part
        wsum[y0:y1, x0:x1] += part
    scene = np.full_like(acc, np.nan)
    np.divide(acc, wsum, out=scene, where=wsum > 0)
    return scene
