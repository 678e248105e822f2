"""Tiling a large scene and blending overlapping tile outputs with a 2-D Hann weight.

Numpy only: the scene pipeline reads windows with rasterio and feeds them here,
and benchmarks can drive it without any raster I/O.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

# The Hann window is zero at its ends; a floor keeps every covered pixel's
# weight positive so that a pixel seen by one tile only is still defined.
WEIGHT_FLOOR = 1e-3


def tiling_problem(size: int, overlap: int) -> str | None:
    """Why tiles of ``size`` pixels cannot overlap by ``overlap``, or None when they can."""
    if size <= 0 or not 0 <= overlap < size:
        return "tile_size must be positive and overlap smaller than it"
    if 2 * overlap > size:
        return "overlap may be at most half of tile_size"
    return None


@dataclass(frozen=True)
class Tile:
    """One tile: its row and column in the grid and its output window in scene pixels.

    A tile lies inside the scene unless the scene is smaller than a tile; the
    model sees ``halo`` more pixels of context around it (see :meth:`context`),
    which are cropped away.
    """

    row: int
    col: int
    y: int
    x: int
    size: int
    halo: int = 0

    def context(self, height: int, width: int) -> tuple[Tile, int, int]:
        """The window the model reads, and where this tile lies inside it.

        The window is the tile grown by its halo, shifted inward where it would
        leave the scene, so that the model sees real pixels as context and meets
        the scene's edges exactly as whole-image inference does. Only a scene
        smaller than the window needs padding (reflected, on the far side).

        Returns:
            ``(window, dy, dx)``: the window as a tile, and the offset of this
            tile's output inside the window's output.
        """
        size = self.size + 2 * self.halo
        y = min(max(0, self.y - self.halo), max(0, height - size))
        x = min(max(0, self.x - self.halo), max(0, width - size))
        return Tile(self.row, self.col, y, x, size), self.y - y, self.x - x


@dataclass(frozen=True)
class TileGrid:
    """Tiles of ``size`` overlapping by ``overlap`` over a ``height x width`` scene.

    The first tile starts at the scene's edge and the last is snapped to end at
    the far edge, so no output comes from beyond the scene. ``halo`` extra pixels
    of real context around each tile are read and cropped away: near tile
    edges, convolutional models then see enough context that tiled and
    whole-image inference agree.
    """

    height: int
    width: int
    size: int
    overlap: int
    halo: int = 0

    def __post_init__(self) -> None:
        problem = tiling_problem(self.size, self.overlap)
        if problem:
            raise ValueError(problem)

    @property
    def stride(self) -> int:
        """Distance between tile origins."""
        return self.size - self.overlap

    def _count(self, extent: int) -> int:
        return max(1, math.ceil(max(0, extent - self.size) / self.stride) + 1)

    @property
    def rows(self) -> int:
        """Tile rows."""
        return self._count(self.height)

    @property
    def cols(self) -> int:
        """Tile columns."""
        return self._count(self.width)

    def __len__(self) -> int:
        return self.rows * self.cols

    def _origin(self, index: int, count: int, extent: int) -> int:
        if index == count - 1 and count > 1:
            return extent - self.size  # snapped to the far edge
        return index * self.stride

    def row_tiles(self, row: int) -> list[Tile]:
        """The tiles of one grid row, left to right."""
        y = self._origin(row, self.rows, self.height)
        return [
            Tile(row, col, y, self._origin(col, self.cols, self.width), self.size, self.halo)
            for col in range(self.cols)
        ]

    def __iter__(self) -> Iterator[Tile]:
        for row in range(self.rows):
            yield from self.row_tiles(row)

    def block_rows(self, row: int) -> tuple[int, int]:
        """Scene rows final once grid rows up to ``row`` are blended: ``[start, stop)``."""
        start = 0 if row == 0 else self._origin(row, self.rows, self.height)
        stop = (
            self.height if row == self.rows - 1 else self._origin(row + 1, self.rows, self.height)
        )
        return max(0, start), min(self.height, stop)


def hann_weight(size: int) -> np.ndarray:
    """``(size, size)`` float32 2-D Hann (raised cosine) weight, floored above zero.

    The floor is applied to each 1-D ramp, not to their product, so that along a
    scene edge (where every covering tile is near its own edge) the weights still
    favour the tile whose centre is nearest.
    """
    if size == 1:
        return np.ones((1, 1), dtype=np.float32)
    ramp = 0.5 - 0.5 * np.cos(2 * np.pi * (np.arange(size) + 0.5) / size)
    ramp = np.maximum(ramp, WEIGHT_FLOOR)
    return np.outer(ramp, ramp).astype(np.float32)


def read_bounds(tile: Tile, height: int, width: int) -> tuple[int, int, int, int]:
    """The part of a tile inside the scene: ``(y0, y1, x0, x1)`` in scene pixels."""
    return (
        max(0, tile.y),
        min(height, tile.y + tile.size),
        max(0, tile.x),
        min(width, tile.x + tile.size),
    )


def reflect_pad(data: np.ndarray, tile: Tile, height: int, width: int) -> np.ndarray:
    """Pad ``(C, h, w)`` read from inside the scene to the tile's full size by reflection."""
    y0, y1, x0, x1 = read_bounds(tile, height, width)
    top, left = y0 - tile.y, x0 - tile.x
    bottom, right = tile.size - top - (y1 - y0), tile.size - left - (x1 - x0)
    if top == bottom == left == right == 0:
        return data
    pads = ((0, 0), (top, bottom), (left, right))
    # Reflection cannot reach further than the data is long; tiny scenes repeat
    # edges instead.
    if max(top, bottom) < data.shape[1] and max(left, right) < data.shape[2]:
        return np.pad(data, pads, mode="reflect")
    return np.pad(data, pads, mode="symmetric" if min(data.shape[1:]) > 0 else "edge")


def add_weighted(
    acc: np.ndarray,
    wsum: np.ndarray,
    top: int,
    tile: Tile,
    outputs: np.ndarray,
    weight: np.ndarray,
    grid: TileGrid,
    left: int = 0,
) -> None:
    """Add a tile's ``(layers, size, size)`` outputs times ``weight`` into buffers.

    ``acc`` ``(layers, rows, columns)`` and ``wsum`` ``(rows, columns)`` hold
    scene pixels from row ``top`` and column ``left`` on; only the part of the
    tile inside the scene is added.
    """
    y0, y1, x0, x1 = read_bounds(tile, grid.height, grid.width)
    ty, tx = y0 - tile.y, x0 - tile.x
    h, w = y1 - y0, x1 - x0
    part = weight[ty : ty + h, tx : tx + w]
    rows, cols = slice(y0 - top, y1 - top), slice(x0 - left, x1 - left)
    acc[:, rows, cols] += outputs[:, ty : ty + h, tx : tx + w] * part
    wsum[rows, cols] += part


class StripBlender:
    """Blends tile outputs row block by row block, so a scene is never held whole.

    Each grid row's tiles add ``weight * output`` into row blocks; once a grid
    row and all rows above are added, the block of scene rows no later tile can
    touch is final and handed out by :meth:`pop_final`.

    Args:
        grid: the tile grid.
        layers: number of output bands blended (predictions and attention).
    """

    def __init__(self, grid: TileGrid, layers: int) -> None:
        self.grid = grid
        self.layers = layers
        self.weight = hann_weight(grid.size)
        # Buffers cover scene rows [self._top, self._top + self._used) and all
        # columns. Allocated once: a grid row's tiles span ``size`` rows, and
        # growing the buffers by copies held them twice over (on a 16384-wide
        # scene, hundreds of MB more at the peak).
        rows = min(grid.size, grid.height)
        self._top = 0
        self._used = 0
        self._acc = np.zeros((layers, rows, grid.width), dtype=np.float32)
        self._wsum = np.zeros((rows, grid.width), dtype=np.float32)
        self._done_rows: set[int] = set()
        self._next_row = 0

    def _ensure(self, stop: int) -> None:
        need = stop - self._top
        if need > self._wsum.shape[0]:  # rows the buffers never held yet: grown once
            extra = need - self._wsum.shape[0]
            self._acc = np.concatenate(
                [self._acc, np.zeros((self.layers, extra, self.grid.width), np.float32)], axis=1
            )
            self._wsum = np.concatenate(
                [self._wsum, np.zeros((extra, self.grid.width), np.float32)]
            )
        self._used = max(self._used, need)

    def add(self, tile: Tile, outputs: np.ndarray | None) -> None:
        """Add one tile's ``(layers, size, size)`` outputs (None: skipped, no data)."""
        if outputs is None:
            return
        g = self.grid
        y0, y1, _, _ = read_bounds(tile, g.height, g.width)
        if y0 < self._top:
            raise RuntimeError("tile added after its rows were finalised")
        self._ensure(y1)
        add_weighted(self._acc, self._wsum, self._top, tile, outputs, self.weight, g)

    def row_done(self, row: int) -> None:
        """Mark a grid row's tiles as all added."""
        self._done_rows.add(row)

    def pop_final(self) -> Iterator[tuple[int, np.ndarray]]:
        """Blocks of final rows: ``(first scene row, (layers, rows, width) float32)``.

        Pixels no tile covered (all skipped) are NaN.
        """
        while self._next_row in self._done_rows:
            start, stop = self.grid.block_rows(self._next_row)
            self._next_row += 1
            if stop <= start:
                continue
            self._ensure(stop)
            n = stop - self._top
            acc, wsum = self._acc[:, :n], self._wsum[:n]
            # One array for the block: no temporaries of its size.
            covered = wsum > 0
            block = np.full((self.layers, n, self.grid.width), np.nan, dtype=np.float32)
            np.divide(acc, wsum, out=block, where=covered)
            # The rows still open move to the top of the buffers; the rest is zeroed.
            # Layer by layer: numpy copies the source first where it cannot rule
            # out overlap, as it could not for all layers' rows at once.
            keep = self._used - n
            for layer in (*self._acc, self._wsum):
                layer[:keep] = layer[n : self._used]
            self._acc[:, keep : self._used] = 0
            self._wsum[keep : self._used] = 0
            self._used = keep
            first = self._top
            self._top = stop
            yield first, block

    @property
    def finished(self) -> bool:
        """Whether every grid row has been handed out."""
        return self._next_row >= self.grid.rows
